//! A client for the control listener, for subcommands that ask the running gateway (`upgate gc`).

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::ControlListen;

/// The `Host` this client sends; the control API takes it as local.
pub const HOST: &str = "upgate-control";

/// `POST path` on the control listener; an error means no gateway answered.
pub async fn post(listen: &ControlListen, path: &str) -> anyhow::Result<(StatusCode, Bytes)> {
    let timeout = std::time::Duration::from_secs(300);
    let exchange = async {
        match listen {
            ControlListen::Tcp(addr) => {
                send(tokio::net::TcpStream::connect(addr).await?, path).await
            }
            ControlListen::Unix(p) => send(tokio::net::UnixStream::connect(p).await?, path).await,
        }
    };
    tokio::time::timeout(timeout, exchange).await?
}

async fn send<S>(stream: S, path: &str) -> anyhow::Result<(StatusCode, Bytes)>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::post(path)
        .header(http::header::HOST, HOST)
        .body(crate::body::empty())?;
    let res = sender.send_request(req).await?;
    let status = res.status();
    let body = res.into_body().collect().await?.to_bytes();
    Ok((status, body))
}
