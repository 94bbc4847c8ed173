//! The listings (`key list`, `audit`, `job list`, `message list`): fetched as the
//! daemon sends them, printed as JSON or as a table with where the next page starts.

use std::process::ExitCode;

use apikeyd::client::Client;
use hyper::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::output::{print_json, print_more, print_table};

/// One page of a listing, in the shape the daemon sends it.
pub trait Listing: Serialize + DeserializeOwned {
    /// The table's column titles.
    const HEADERS: &'static [&'static str];
    /// The table's rows, one cell a column.
    fn rows(&self) -> Vec<Vec<String>>;
    /// Where the next page starts; `None` on the last page, or for a listing that is
    /// not paged.
    fn next_cursor(&self) -> Option<&str> {
        None
    }
}

/// GET `path` and print the listing it answers.
pub async fn list<L: Listing>(client: &Client, path: &str, json: bool) -> anyhow::Result<ExitCode> {
    let page: L = client.fetch(Method::GET, path).await?;
    if json {
        print_json(&page);
    } else {
        print_table(L::HEADERS, &page.rows());
        print_more("--cursor", page.next_cursor());
    }
    Ok(ExitCode::SUCCESS)
}
