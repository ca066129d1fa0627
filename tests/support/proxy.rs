//! A TCP proxy on loopback that a test can cut and restore (a partition
//! between one node and etcd without network namespaces or netem), or hold
//! (bytes are read but not passed on until released: a request provably in
//! flight, for ordering a test's action against it).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;

pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    hold: Arc<Hold>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<port> to `target` (host:port).
    pub fn start(target: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let cut = Arc::new(AtomicBool::new(false));
        let hold = Arc::new(Hold::default());
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let target = target.to_owned();
        let (c, s, l, h) = (cut.clone(), stop.clone(), live.clone(), hold.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = conn else { continue };
                if c.load(Ordering::SeqCst) {
                    // Partitioned: the connection goes nowhere.
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(&target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut live = l.lock().expect("lock");
                    live.push(client.try_clone().expect("clone"));
                    live.push(server.try_clone().expect("clone"));
                }
                pipe(client.try_clone().expect("clone"), server.try_clone().expect("clone"), c.clone(), h.clone());
                pipe(server, client, c.clone(), h.clone());
            }
        });
        Proxy { port, cut, hold, live, stop }
    }

    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for s in self.live.lock().expect("lock").drain(..) {
            let _ = s.shutdown(Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }

    /// From now on, bytes read on any connection wait in the proxy.
    pub fn hold(&self) {
        self.hold.held_bytes.store(0, Ordering::SeqCst);
        self.hold.on.store(true, Ordering::SeqCst);
    }

    /// Bytes read and not passed on since `hold()`.
    pub fn held_bytes(&self) -> u64 {
        self.hold.held_bytes.load(Ordering::SeqCst)
    }

    /// Passes the held bytes on and stops holding.
    pub fn release(&self) {
        self.hold.on.store(false, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct Hold {
    on: AtomicBool,
    held_bytes: AtomicU64,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>, hold: Arc<Hold>) {
    thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if hold.on.load(Ordering::SeqCst) {
                        hold.held_bytes.fetch_add(n as u64, Ordering::SeqCst);
                        while hold.on.load(Ordering::SeqCst) && !cut.load(Ordering::SeqCst) {
                            thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                    if cut.load(Ordering::SeqCst) || to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}
