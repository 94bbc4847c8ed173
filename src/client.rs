//! A small HTTP/1.1 client for the admin API, over the Unix socket (identity from
//! SO_PEERCRED) or over TCP with a bearer key. Used by `apikeyctl`.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// Where the daemon is.
#[derive(Clone)]
pub enum Endpoint {
    /// The admin Unix socket.
    Unix(PathBuf),
    /// `host:port` with a bearer key.
    Tcp {
        /// `host:port`.
        addr: String,
        /// Key with the `apikeyd:admin` scope.
        token: String,
    },
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Tcp { addr, .. } => write!(f, "http://{addr} (bearer <redacted>)"),
        }
    }
}

/// Failures talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect.
    #[error("cannot reach apikeyd at {endpoint}: {source} (is the daemon running? set --socket or APIKEYD_SOCKET)")]
    Connect {
        /// Where we tried.
        endpoint: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// HTTP-level failure.
    #[error("HTTP error talking to apikeyd: {0}")]
    Http(String),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// What the daemon sent could not be written where it was going.
    #[error("cannot write what apikeyd sent: {0}")]
    Write(#[source] std::io::Error),
    /// A 2xx answer that is not what this client expects (for instance a daemon of
    /// another version).
    #[error("unexpected answer from apikeyd to {path}")]
    Decode {
        /// The request's path.
        path: String,
        /// What did not fit.
        source: serde_json::Error,
    },
}

/// Admin API client.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
}

impl Client {
    /// A client for `endpoint`.
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
    }

    /// Send a request; return the JSON body of a 2xx answer, or the daemon's error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let (status, value) = self.raw(method, path, body).await?;
        success(status, value)
    }

    /// A request without a body whose 2xx answer is decoded as `T`.
    pub async fn fetch<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
    ) -> Result<T, ClientError> {
        let (status, value) = self.exchange(method, path, Bytes::new(), JSON).await?;
        decode(path, success(status, value)?)
    }

    /// A request with `body` (one of the library's request types) whose 2xx answer
    /// is decoded as `T`.
    pub async fn send<B, T>(&self, method: Method, path: &str, body: &B) -> Result<T, ClientError>
    where
        B: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let (status, value) = self.exchange(method, path, payload(body)?, JSON).await?;
        decode(path, success(status, value)?)
    }

    /// Send a request and return status and JSON body, whatever the status.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Value), ClientError> {
        let payload = match body {
            Some(v) => payload(v)?,
            None => Bytes::new(),
        };
        self.exchange(method, path, payload, JSON).await
    }

    /// POST `body` of type `content_type` as it is; return status and JSON body,
    /// whatever the status.
    pub async fn post_bytes(
        &self,
        path: &str,
        content_type: &'static str,
        body: Bytes,
    ) -> Result<(StatusCode, Value), ClientError> {
        self.exchange(Method::POST, path, body, content_type).await
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        payload: Bytes,
        content_type: &'static str,
    ) -> Result<(StatusCode, Value), ClientError> {
        let response = self.request(method, path, payload, content_type).await?;
        let status = response.status();
        Ok((status, json_body(response.into_body()).await?))
    }

    /// POST to `path` and copy the body of a 2xx answer into `to` as it arrives
    /// (a backup is as large as the database); returns the answer's headers and
    /// the bytes copied, or the daemon's error.
    pub async fn download<W>(
        &self,
        path: &str,
        to: &mut W,
    ) -> Result<(hyper::HeaderMap, u64), ClientError>
    where
        W: tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::AsyncWriteExt;
        let response = self.request(Method::POST, path, Bytes::new(), JSON).await?;
        let status = response.status();
        let (parts, mut body) = response.into_parts();
        if !status.is_success() {
            return Err(api_error(status, json_body(body).await?));
        }
        let mut copied = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Http(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                to.write_all(&data).await.map_err(ClientError::Write)?;
                copied += data.len() as u64;
            }
        }
        to.flush().await.map_err(ClientError::Write)?;
        Ok((parts.headers, copied))
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        payload: Bytes,
        content_type: &'static str,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let http = |e: &dyn std::fmt::Display| ClientError::Http(e.to_string());
        let mut builder = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "apikeyd")
            .header(hyper::header::CONTENT_TYPE, content_type);
        if let Endpoint::Tcp { token, .. } = &self.endpoint {
            builder = builder.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = builder.body(Full::new(payload)).map_err(|e| http(&e))?;
        match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| ClientError::Connect {
                        endpoint: path.display().to_string(),
                        source,
                    })?;
                send(stream, req).await
            }
            Endpoint::Tcp { addr, .. } => {
                let stream = tokio::net::TcpStream::connect(addr)
                    .await
                    .map_err(|source| ClientError::Connect {
                        endpoint: addr.clone(),
                        source,
                    })?;
                send(stream, req).await
            }
        }
    }
}

/// A whole answer's body as JSON (text that is not JSON as a string; none as null).
async fn json_body(body: hyper::body::Incoming) -> Result<Value, ClientError> {
    let bytes = body
        .collect()
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?
        .to_bytes();
    Ok(if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
    })
}

/// The content type of every request but a file's.
const JSON: &str = "application/json";

fn payload<B: Serialize + ?Sized>(body: &B) -> Result<Bytes, ClientError> {
    serde_json::to_vec(body)
        .map(Bytes::from)
        .map_err(|e| ClientError::Http(e.to_string()))
}

/// The body of a 2xx answer, or the daemon's error message.
fn success(status: StatusCode, value: Value) -> Result<Value, ClientError> {
    if status.is_success() {
        return Ok(value);
    }
    Err(api_error(status, value))
}

/// The daemon's error in a non-2xx answer.
fn api_error(status: StatusCode, value: Value) -> ClientError {
    let message = value
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {status}: {value}"));
    ClientError::Api {
        status: status.as_u16(),
        message,
    }
}

fn decode<T: DeserializeOwned>(path: &str, value: Value) -> Result<T, ClientError> {
    T::deserialize(value).map_err(|source| ClientError::Decode {
        path: path.to_owned(),
        source,
    })
}

async fn send<S>(
    stream: S,
    req: Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, ClientError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ClientError::Http(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
        .send_request(req)
        .await
        .map_err(|e| ClientError::Http(e.to_string()))
}
