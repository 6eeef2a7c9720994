//! The upload API under `uploads.route` (SPEC §5), authenticated by `X-Upload-Handle`.

use std::collections::HashMap;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};

use super::ingest::{self, Policy};
use super::{Quota, commit, describe, formats};
use crate::body::{self, Body};
use crate::db::{FileRecord, Owner};
use crate::error::{Error, Kind, Result};
use crate::files::{self, Serve};
use crate::gateway::{Ctx, Gateway};
use crate::handles::Session;
use crate::proxy::headers::X_UPLOAD_HANDLE;
use crate::proxy::unix_now;

/// Serves one request under the route; `rest` is the path after it ("" or "/<name>", still encoded).
pub async fn route(
    gw: &Gateway,
    req: Request<Body>,
    ctx: &mut Ctx,
    rest: &str,
) -> Result<Response<Body>> {
    ctx.upload_api = true;
    let session = authenticate(gw, &req, ctx)?;
    let name = match rest.strip_prefix('/') {
        None | Some("") => None,
        Some(encoded) => Some(decode_name(encoded)?),
    };
    match (req.method().clone(), name) {
        (Method::POST, None) => upload(gw, req, &session).await,
        (Method::GET, None) => list(gw, &session).await,
        (Method::DELETE, None) => delete_all(gw, &session).await,
        (Method::GET | Method::HEAD, Some(name)) => fetch(gw, &req, &session, &name).await,
        (Method::DELETE, Some(name)) => delete_one(gw, &session, &name).await,
        (m, _) => Err(Error::new(
            Kind::MethodNotAllowed,
            format!("{m} is not allowed here"),
        )),
    }
}

fn authenticate(gw: &Gateway, req: &Request<Body>, ctx: &Ctx) -> Result<Session> {
    let invalid = || {
        Error::new(
            Kind::InvalidHandle,
            "missing, unknown or expired upload handle",
        )
    };
    let handle = req
        .headers()
        .get(X_UPLOAD_HANDLE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(invalid)?;
    let client = ctx.client.as_deref().ok_or_else(invalid)?;
    gw.registry
        .resolve(handle.trim(), client, unix_now())
        .ok_or_else(invalid)
}

fn decode_name(encoded: &str) -> Result<String> {
    let bad = || Error::new(Kind::NotFound, "no such file");
    let name = percent_encoding::percent_decode_str(encoded)
        .decode_utf8()
        .map_err(|_| bad())?;
    // Only names upgate could have stored are looked up.
    super::names::sanitize(&name)
        .filter(|n| *n == name)
        .ok_or_else(bad)
}

async fn upload(gw: &Gateway, req: Request<Body>, session: &Session) -> Result<Response<Body>> {
    let (parts, body) = req.into_parts();
    let files = blocking(gw, {
        let token = session.token.clone();
        move |store| store.db.session_files(&token)
    })
    .await?;
    let cfg = &gw.config.uploads;
    let limits = &session.limits;
    let policy = Policy {
        accept: formats(limits.accept.as_ref().unwrap_or(&cfg.accept)),
        max_file_bytes: limits.max_bytes.unwrap_or(cfg.max_file_bytes),
        max_total_bytes: cfg.max_session_bytes,
        max_files: limits.max_files.unwrap_or(cfg.max_session_files),
        existing: files
            .iter()
            .map(|f| (f.name.clone(), f.size))
            .collect::<HashMap<_, _>>(),
        body_timeout: gw.config.server.idle_timeout,
    };
    let ingested = ingest::ingest(&gw.store, &parts.headers, body, &policy).await?;
    let quota = Quota {
        max_bytes: policy.max_total_bytes,
        max_files: policy.max_files,
    };
    let owner = Owner::Session {
        token: session.token.to_string(),
    };
    let _guard = gw.session_locks.lock(&session.token).await;
    let store = gw.store.clone();
    let records =
        tokio::task::spawn_blocking(move || commit(&store, &owner, ingested, Some(quota)))
            .await
            .map_err(|e| Error::internal("the commit thread failed", e))??;
    gw.count_accepted(&records);
    let described: Vec<_> = records.iter().map(|f| describe(gw, f)).collect();
    let first = &described[0];
    Ok(body::json(
        StatusCode::OK,
        &serde_json::json!({
            "accepted": true,
            "file": first["name"],
            "url": first["url"],
            "id": first["id"],
            "files": described,
        }),
    ))
}

async fn list(gw: &Gateway, session: &Session) -> Result<Response<Body>> {
    let token = session.token.clone();
    let files = blocking(gw, move |store| store.db.session_files(&token)).await?;
    let described: Vec<_> = files.iter().map(|f| describe(gw, f)).collect();
    Ok(body::json(
        StatusCode::OK,
        &serde_json::json!({ "files": described }),
    ))
}

async fn find(gw: &Gateway, session: &Session, name: &str) -> Result<FileRecord> {
    let token = session.token.clone();
    let files = blocking(gw, move |store| store.db.session_files(&token)).await?;
    files
        .into_iter()
        .find(|f| f.name == name)
        .ok_or_else(|| Error::new(Kind::NotFound, "no such file"))
}

async fn fetch(
    gw: &Gateway,
    req: &Request<Body>,
    session: &Session,
    name: &str,
) -> Result<Response<Body>> {
    let file = find(gw, session, name).await?;
    let path = gw.store.blob_path(&file.id);
    let serve = Serve {
        path: &path,
        content_type: &file.content_type,
        disposition: Some(("attachment", &file.name)),
        etag_extra: &file.id,
    };
    files::serve(req.method(), req.headers(), serve).await
}

async fn delete_one(gw: &Gateway, session: &Session, name: &str) -> Result<Response<Body>> {
    let file = find(gw, session, name).await?;
    remove(gw, vec![file.id]).await?;
    Ok(no_content())
}

async fn delete_all(gw: &Gateway, session: &Session) -> Result<Response<Body>> {
    let token = session.token.clone();
    let files = blocking(gw, move |store| store.db.session_files(&token)).await?;
    remove(gw, files.into_iter().map(|f| f.id).collect()).await?;
    Ok(no_content())
}

/// Removes files from the index (durably), then their blobs.
pub async fn remove(gw: &Gateway, ids: Vec<String>) -> Result<Vec<FileRecord>> {
    blocking(gw, move |store| {
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let removed = store.db.remove_files(&refs)?;
        removed.iter().for_each(|f| store.remove_blob(&f.id));
        Ok(removed)
    })
    .await
}

fn no_content() -> Response<Body> {
    let mut res = Response::new(body::empty());
    *res.status_mut() = StatusCode::NO_CONTENT;
    res
}

/// Runs database work off the async workers, with the store at hand.
pub async fn blocking<T, F>(gw: &Gateway, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(&super::store::Store) -> std::result::Result<T, crate::db::DbError> + Send + 'static,
{
    let store: Arc<super::store::Store> = gw.store.clone();
    crate::db::off_thread(move || f(&store)).await
}
