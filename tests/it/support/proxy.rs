//! A TCP fault proxy on 127.0.0.1, between walhook and PostgreSQL or a receiver.
//!
//! [`FaultProxy::start`] listens on `127.0.0.1:0` and forwards every connection to the
//! upstream address. [`FaultProxy::set`] switches all connections, current and new, at
//! runtime between the [`Fault`]s (toxiproxy's toxics are the model):
//!
//! - [`Fault::Pass`]: forward both directions.
//! - [`Fault::BlackHole`]: stop forwarding in both directions, keeping every socket open,
//!   as a network partition does. Bytes already read are held, not dropped, and flow on
//!   after a switch back to `Pass` (TCP would have retransmitted them). New connections
//!   are accepted and then black-holed too.
//! - [`Fault::Reset`]: close every connection with an RST (`SO_LINGER` 0), and reset new
//!   ones as soon as they are accepted.
//! - [`Fault::Refuse`]: stop listening, so new connections are refused
//!   (`ECONNREFUSED`); existing ones carry on. The same port is bound again on the next
//!   switch.
//! - [`Fault::Trickle`]: forward at most `bytes` bytes per `every` in each direction
//!   (a slow link).
//! - [`Fault::TrickleDown`]: forward what the client sends at full speed, and what the
//!   upstream answers at most `bytes` bytes per `every` (a slow-loris receiver: the
//!   status line and headers dribble in).
//!
//! The proxy runs on the runtime of the test that started it and stops (closing every
//! connection) when dropped. [`FaultProxy::accepted`] and [`FaultProxy::open`] count
//! connections, so a test can tell how many attempts a client made and whether it
//! closed them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the traffic; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward everything.
    Pass,
    /// Forward nothing, keep the sockets open.
    BlackHole,
    /// Reset every connection.
    Reset,
    /// Refuse new connections (not listening).
    Refuse,
    /// Forward `bytes` bytes per `every`, in each direction.
    Trickle {
        /// Bytes per step.
        bytes: usize,
        /// Time between steps.
        every: Duration,
    },
    /// Forward the upstream's answers at `bytes` bytes per `every`; requests at full speed.
    TrickleDown {
        /// Bytes per step.
        bytes: usize,
        /// Time between steps.
        every: Duration,
    },
}

impl Fault {
    /// The pace of one direction under this fault, if it is slowed.
    fn pace(self, downstream: bool) -> Option<(usize, Duration)> {
        match self {
            Fault::Trickle { bytes, every } => Some((bytes.max(1), every)),
            Fault::TrickleDown { bytes, every } if downstream => Some((bytes.max(1), every)),
            _ => None,
        }
    }
}

#[derive(Default)]
struct Counters {
    accepted: AtomicUsize,
    open: AtomicUsize,
}

/// The proxy; see the module docs.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on 127.0.0.1:0 in front of `upstream`, in [`Fault::Pass`].
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fault proxy on 127.0.0.1:0");
        let addr = listener.local_addr().expect("fault proxy address");
        let (fault, rx) = watch::channel(Fault::Pass);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept_loop(listener, addr, upstream, rx, counters.clone()));
        FaultProxy {
            addr,
            fault,
            counters,
            task,
        }
    }

    /// The address to connect to instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches every connection, current and new, to `fault`.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// The fault in effect.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.counters.accepted.load(Ordering::SeqCst)
    }

    /// Connections currently open (accepted and not yet closed by either side).
    pub fn open(&self) -> usize {
        self.counters.open.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
        // Connection tasks watch the fault channel: this resets them all.
        self.fault.send_replace(Fault::Reset);
    }
}

async fn accept_loop(
    listener: TcpListener,
    addr: SocketAddr,
    upstream: SocketAddr,
    mut fault: watch::Receiver<Fault>,
    counters: Arc<Counters>,
) {
    let mut listener = Some(listener);
    loop {
        if *fault.borrow_and_update() == Fault::Refuse {
            listener = None; // closed: connections are refused
            if fault.changed().await.is_err() {
                return;
            }
            continue;
        }
        let current = match &listener {
            Some(l) => l,
            None => match TcpListener::bind(addr).await {
                Ok(l) => listener.insert(l),
                Err(err) => panic!("fault proxy: cannot listen on {addr} again: {err}"),
            },
        };
        tokio::select! {
            accepted = current.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.accepted.fetch_add(1, Ordering::SeqCst);
                counters.open.fetch_add(1, Ordering::SeqCst);
                let counters = counters.clone();
                let fault = fault.clone();
                tokio::spawn(async move {
                    connection(client, upstream, fault).await;
                    counters.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
            changed = fault.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Closes `stream` with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Waits until `fault` becomes `Reset` (or the proxy is gone).
async fn reset_requested(mut fault: watch::Receiver<Fault>) {
    let _ = fault.wait_for(|f| *f == Fault::Reset).await;
}

async fn connection(mut client: TcpStream, upstream: SocketAddr, fault: watch::Receiver<Fault>) {
    if *fault.borrow() == Fault::Reset {
        reset(client);
        return;
    }
    // Connect upstream at once, so a black hole looks like a peer that accepted.
    let mut server = tokio::select! {
        connected = TcpStream::connect(upstream) => match connected {
            Ok(server) => server,
            Err(_) => {
                reset(client);
                return;
            }
        },
        _ = reset_requested(fault.clone()) => {
            reset(client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let was_reset = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(client_read, server_write, fault.clone(), false);
        let down = pump(server_read, client_write, fault.clone(), true);
        tokio::select! {
            biased;
            _ = reset_requested(fault.clone()) => true,
            _ = async { tokio::join!(up, down) } => false,
        }
    };
    // The pumps also stop on a reset; either way it must end with an RST.
    if was_reset || matches!(*fault.borrow(), Fault::Reset) {
        reset(client);
        reset(server);
    }
}

/// Copies `from` to `to` under the current fault, until EOF or an error; closes the
/// write side on EOF. `downstream`: this is the upstream → client direction.
async fn pump<R, W>(mut from: R, mut to: W, mut fault: watch::Receiver<Fault>, downstream: bool)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate(&mut fault).await.is_none() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let mut sent = 0;
        while sent < n {
            let Some(current) = gate(&mut fault).await else {
                return;
            };
            let pace = current.pace(downstream);
            let step = pace.map_or(n - sent, |(bytes, _)| bytes.min(n - sent));
            if to.write_all(&buf[sent..sent + step]).await.is_err() {
                return;
            }
            sent += step;
            if let Some((_, every)) = pace {
                // A switch to another fault ends the pause early.
                let _ = tokio::time::timeout(every, fault.changed()).await;
            }
        }
    }
}

/// Waits while the fault is `BlackHole`; `None` once the connection must end (reset or
/// the proxy is gone). `Refuse` does not affect open connections.
async fn gate(fault: &mut watch::Receiver<Fault>) -> Option<Fault> {
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Reset => return None,
            Fault::BlackHole => {
                if fault.changed().await.is_err() {
                    return None;
                }
            }
            other => return Some(other),
        }
    }
}
