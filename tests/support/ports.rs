//! The one port allocator of the tests (used by `node.rs` and `testbed.rs`).
//! Include it once per test binary, before them:
//! `#[path = "support/ports.rs"] mod ports;`.
//!
//! Each process walks a window of 200 ports chosen by its process id, below
//! the kernel's ephemeral range (32768+): a port there can be taken by any
//! outgoing connection between this check and the moment a daemon binds it.
//! Ports are handed out in order from one counter, so parallel tests in one
//! binary never get the same port, and parallel binaries are unlikely to
//! meet; past its own window a process spills into the following ones.
#![allow(dead_code)]

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const LOW: u32 = 10_000;
const WINDOWS: u32 = 110; // 10_000 + 110 * 200 = 32_000
const WIDTH: u32 = 200;

/// Free on 127.0.0.1 and on 0.0.0.0 (postgres and the API may bind either).
fn free(p: u16) -> bool {
    TcpListener::bind(("127.0.0.1", p)).is_ok() && TcpListener::bind(("0.0.0.0", p)).is_ok()
}

/// The first of `n` consecutive ports that are free now.
pub fn free_ports(n: u16) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let window = LOW + (std::process::id() % WINDOWS) * WIDTH;
    for _ in 0..2_000 {
        let off = NEXT.fetch_add(n as u32, Ordering::SeqCst);
        let base = LOW + (window - LOW + off) % (WINDOWS * WIDTH);
        if base + n as u32 > LOW + WINDOWS * WIDTH {
            continue;
        }
        let base = base as u16;
        if (base..base + n).all(free) {
            return base;
        }
    }
    panic!("no free block of {n} ports below 32000");
}

/// One port that is free now.
pub fn free_port() -> u16 {
    free_ports(1)
}
