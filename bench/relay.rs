//! bench/run's ceiling for the proxy row: a TCP relay that does no HTTP work at all.
//!
//! Each client connection gets one upstream connection, and bytes are copied both ways as they
//! come: per request the same four system calls a keep-alive HTTP proxy makes (read the
//! request, write it upstream, read the answer, write it back), and next to nothing in user
//! space. Its req/s under wrk is what any proxy that makes those calls could reach on this
//! machine, beside the same upstream and the same wrk.
//!
//! Usage: `upgate-relay LISTEN_ADDR UPSTREAM_ADDR` (two worker threads, as upgate on 2 cores).

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: upgate-relay LISTEN_ADDR UPSTREAM_ADDR");
        std::process::exit(2);
    };
    let parse = |s: String| {
        s.parse::<SocketAddr>()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    };
    let (listen, upstream) = (parse(listen)?, parse(upstream)?);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?
        .block_on(async move {
            let listener = TcpListener::bind(listen).await?;
            loop {
                let (mut client, _) = listener.accept().await?;
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        })
}
