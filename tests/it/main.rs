//! The one integration test binary: the real `apikeyd` and `apikeyctl`.

mod alert_delivery;
mod alert_email;
mod alert_operator;
mod alert_plugins;
mod alerts;
mod authz;
mod backup;
mod bulk_import;
mod caddy;
mod cluster;
mod config;
mod connection_limits;
mod echo;
mod forward_auth;
mod keep_alive;
mod key_list;
mod lifecycle;
mod maintenance;
mod manual;
mod migrate;
mod nginx;
mod openapi;
mod ops;
mod paging;
#[path = "../../src/store/postgres/test_server.rs"]
mod pg_server;
mod plan;
mod postgres;
mod rate_limits;
mod rotation;
mod routes;
mod security_keys;
mod service;
mod smtp;
mod systemd;
mod util;
