//! Uploads: format recognition, safe names, and the files on disk.

pub mod formats;
pub mod names;
pub mod store;
