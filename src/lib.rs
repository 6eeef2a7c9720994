//! upgate: an upload gateway that stands in front of a web application as its reverse proxy.
//!
//! The binary is a thin shell over [`cli::run`]; tests, benches and fuzz targets link this same library.
//! The contract (config keys, headers, routes, JSON) is SPEC.md.

#![forbid(unsafe_code)]

pub mod access;
pub mod assets;
pub mod body;
pub mod cli;
pub mod config;
pub mod control;
pub mod cors;
pub mod db;
pub mod demo;
pub mod error;
pub mod files;
pub mod gateway;
pub mod handles;
pub mod identity;
pub mod intercept;
pub mod metrics;
pub mod proxy;
pub mod retention;
pub mod server;
pub mod signing;
#[cfg(test)]
mod testing;
pub mod upload;
