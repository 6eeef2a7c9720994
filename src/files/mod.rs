//! Serving files: uploaded ones by id and the application's media, with Range, ETag and HEAD.

pub mod range;
