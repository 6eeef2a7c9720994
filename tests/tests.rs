//! upgate's integration tests: one binary, the real gateway in front of a real upstream (see `util`).

mod demo;
mod files;
mod intercepts;
mod lifecycle;
mod operations;
mod proxy;
mod tls;
mod uploads;
mod util;
