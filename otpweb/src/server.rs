//! HTTPS: TLS by rustls (ring), HTTP/1.1 and HTTP/2 by hyper, each request
//! handed to the axum router with the browser's address attached.
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

/// Connections served at once, over all addresses.
const MAX_CONNECTIONS: usize = 256;
/// A client that has not finished its TLS handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// A connection is closed after this long, idle or not (browsers reconnect).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(600);

pub async fn serve(listeners: Vec<TcpListener>, tls: Arc<rustls::ServerConfig>, app: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let acceptor = TlsAcceptor::from(tls);
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, acceptor.clone(), app.clone(), slots.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, app: Router, slots: Arc<Semaphore>) {
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection(tcp, peer, acceptor, app)).await;
            drop(permit);
        });
    }
}

async fn connection(tcp: tokio::net::TcpStream, peer: SocketAddr, acceptor: TlsAcceptor, app: Router) {
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake with {peer}: {e}");
            return;
        }
        Err(_) => return,
    };
    let service = app.map_request(move |mut request: Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    });
    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(32);
    if let Err(e) = builder.serve_connection(TokioIo::new(tls), TowerToHyperService::new(service)).await {
        tracing::debug!("connection from {peer}: {e}");
    }
}
