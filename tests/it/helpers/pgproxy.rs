//! A small TCP proxy in front of the shared PostgreSQL server that a test controls: it can
//! cut every open connection at once and refuse (or accept again) new ones. The server is
//! shared by every test running in parallel, so it is never restarted; connections through
//! the proxy are the only ones a fault touches.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The proxy; dropping it stops it and closes every connection through it.
pub struct PgProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

struct Shared {
    upstream: SocketAddr,
    refusing: AtomicBool,
    /// Bumped by `cut_all`: every connection opened under an older generation ends.
    generation: watch::Sender<u64>,
    accepted: AtomicU64,
}

impl PgProxy {
    /// A proxy on `127.0.0.1:0` forwarding to the server of `server_url` (host and port).
    pub async fn start(server_url: &str) -> PgProxy {
        let u = url::Url::parse(server_url).expect("server url parses");
        let host = u.host_str().unwrap_or("127.0.0.1").to_string();
        let port = u.port().unwrap_or(5432);
        let upstream = tokio::net::lookup_host((host.as_str(), port))
            .await
            .expect("server host resolves")
            .next()
            .expect("server host has an address");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let (generation, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            upstream,
            refusing: AtomicBool::new(false),
            generation,
            accepted: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        PgProxy { addr, shared, stop }
    }

    /// `url` (a database URL on the proxied server) pointed at the proxy instead.
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).expect("database url parses");
        u.set_host(Some("127.0.0.1")).expect("host");
        u.set_port(Some(self.addr.port())).expect("port");
        u.to_string()
    }

    /// Closes every connection open through the proxy now (both directions, at once).
    pub fn cut_all(&self) {
        self.shared.generation.send_modify(|g| *g += 1);
    }

    /// New connections are closed as soon as they are accepted (`true`) or forwarded again.
    pub fn refuse(&self, on: bool) {
        self.shared.refusing.store(on, Ordering::SeqCst);
    }

    /// Connections forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.cut_all();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let (client, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => continue,
            },
        };
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut gen = shared.generation.subscribe();
            let born = *gen.borrow_and_update();
            let Ok(upstream) = TcpStream::connect(shared.upstream).await else {
                return;
            };
            forward(client, upstream, &mut gen, born).await;
        });
    }
}

/// Copies both ways until either side closes or the generation moves past `born`; then
/// both sockets are dropped (closed) together.
async fn forward(
    mut client: TcpStream,
    mut upstream: TcpStream,
    gen: &mut watch::Receiver<u64>,
    born: u64,
) {
    let cut = async {
        loop {
            if gen.changed().await.is_err() || *gen.borrow() != born {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
        _ = cut => {}
    }
    // Both sockets close here, mid-conversation, as a cut network or a killed server
    // leaves them.
    drop(client);
    drop(upstream);
}
