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
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);
/// Connections one address (an IPv6 /64) may hold at once: a few addresses
/// cannot take every slot.
const PER_ADDRESS: usize = 16;

/// Connections held per address (IPv6: per /64).
#[derive(Default)]
struct PerAddress(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

/// What counts as one address.
fn network(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, std::net::IpAddr::V4),
        v4 => v4,
    }
}

impl PerAddress {
    /// A place for one more connection from `ip`, or none.
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let key = network(ip);
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(key).or_insert(0);
        if *n >= PER_ADDRESS {
            return None;
        }
        *n += 1;
        Some(AddressSlot { of: self.clone(), key })
    }
}

/// One connection's place in [`PerAddress`], given back when dropped.
struct AddressSlot {
    of: Arc<PerAddress>,
    key: std::net::IpAddr,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self.of.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

pub async fn serve(listeners: Vec<TcpListener>, tls: Arc<rustls::ServerConfig>, app: Router) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let per_address = Arc::new(PerAddress::default());
    let acceptor = TlsAcceptor::from(tls);
    let mut tasks = tokio::task::JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(listener, acceptor.clone(), app.clone(), slots.clone(), per_address.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    slots: Arc<Semaphore>,
    per_address: Arc<PerAddress>,
) {
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
        let Some(place) = per_address.take(peer.ip()) else {
            tracing::debug!("{peer}: its address holds {PER_ADDRESS} connections already; closed");
            continue;
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, connection(tcp, peer, acceptor, app)).await;
            drop(place);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_holds_at_most_its_share_and_gets_it_back() {
        let p = Arc::new(PerAddress::default());
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        let held: Vec<AddressSlot> = (0..PER_ADDRESS).map(|_| p.take(a).unwrap()).collect();
        assert!(p.take(a).is_none());
        assert!(p.take("192.0.2.2".parse().unwrap()).is_some(), "another address is not affected");
        // One /64 is one address; another /64 is another.
        let v6 = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        let in_64: Vec<AddressSlot> =
            (0..PER_ADDRESS).map(|i| p.take(v6(&format!("2001:db8::{i:x}"))).unwrap()).collect();
        assert!(p.take(v6("2001:db8::ffff:1")).is_none());
        assert!(p.take(v6("2001:db8:0:1::1")).is_some());
        drop(held);
        assert!(p.take(a).is_some(), "closed connections give their places back");
        drop(in_64);
    }
}
