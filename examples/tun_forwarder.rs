//! A user-space forwarder joining two network namespaces through two TUN devices: packets the
//! kernel routes into `tun0` of namespace A come out of `tun0` of namespace B and back, so TCP
//! works end to end across a user program.
//!
//! ```sh
//! cargo build --example tun_forwarder && sudo target/debug/examples/tun_forwarder
//! ```
//!
//! A is 10.9.0.1/24, B is 10.9.0.2/24. The program wires both, then (as its demonstration)
//! sends `--bytes N` (default 4 MiB) from A to a TCP server in B, which sends them back, and
//! checks they arrived intact. `--serve` keeps forwarding afterwards until killed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;

use netbox::sys::netlink::Netlink;
use netbox::sys::netns::NetNs;
use netbox::sys::tuntap::{AsyncQueue, TunBuilder};

type Error = Box<dyn std::error::Error + Send + Sync>;

const ADDR_A: &str = "10.9.0.1/24";
const ADDR_B: &str = "10.9.0.2/24";
const PORT: u16 = 7000;

fn main() {
    if let Err(e) = run() {
        eprintln!("tun_forwarder: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Error> {
    let mut bytes: usize = 4 << 20;
    let mut serve = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bytes" => bytes = args.next().ok_or("--bytes needs a value")?.parse()?,
            "--serve" => serve = true,
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let a = NetNs::create()?;
    let b = NetNs::create()?;
    // Each device is made inside its namespace; its descriptor stays bound to it.
    let tun_a = a.run_in(|| TunBuilder::tun().name("tun0").open())??;
    let tun_b = b.run_in(|| TunBuilder::tun().name("tun0").open())??;

    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let (a2, b2) = (a.try_clone_fd()?, b.try_clone_fd()?);
    let forwarder = std::thread::spawn(move || -> Result<(), String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let setup = async {
                let (a, b) = (NetNs::from_fd(a2)?, NetNs::from_fd(b2)?);
                configure(&a, ADDR_A).await?;
                configure(&b, ADDR_B).await?;
                Ok::<_, Error>((
                    Arc::new(tun_a.into_async_queue()?),
                    Arc::new(tun_b.into_async_queue()?),
                ))
            };
            let (qa, qb) = match setup.await {
                Ok(q) => q,
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string()));
                    return Err(e.to_string());
                }
            };
            let _ = ready_tx.send(Ok(()));
            let there = tokio::spawn(shuttle(qa.clone(), qb.clone()));
            let back = tokio::spawn(shuttle(qb, qa));
            let (x, y) = futures::join!(there, back);
            x.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
            y.map_err(|e| e.to_string())?.map_err(|e| e.to_string())
        })
    });
    ready_rx.recv()??;

    let server_addr: SocketAddr = format!("10.9.0.2:{PORT}").parse()?;
    let listener = b.run_in(|| TcpListener::bind(server_addr))??;
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut conn, _) = listener.accept()?;
        let mut buf = vec![0u8; 65_536];
        let mut total = 0;
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            conn.write_all(&buf[..n])?;
            total += n;
        }
    });
    let mut client = a.run_in(|| TcpStream::connect(server_addr))??;
    let data: Vec<u8> = (0..bytes).map(|i| (i * 7 % 251) as u8).collect();
    let mut reader = client.try_clone()?;
    let expected = data.clone();
    let receiver = std::thread::spawn(move || -> std::io::Result<bool> {
        let mut got = vec![0u8; expected.len()];
        reader.read_exact(&mut got)?;
        Ok(got == expected)
    });
    client.write_all(&data)?;
    client.shutdown(std::net::Shutdown::Write)?;
    let intact = receiver.join().map_err(|_| "receiver panicked")??;
    let echoed = server.join().map_err(|_| "server panicked")??;
    if !intact || echoed != bytes {
        return Err(format!("TCP data corrupted: {echoed} of {bytes} bytes echoed").into());
    }
    println!(
        "tun_forwarder: TCP {} -> {}:{PORT} and back through user space: {bytes} bytes intact",
        ADDR_A, ADDR_B
    );
    if serve {
        return forwarder
            .join()
            .map_err(|_| "forwarder panicked")?
            .map_err(Into::into);
    }
    Ok(())
}

/// Addresses `tun0` of `ns` (the subnet's route comes with it) and brings it and lo up.
async fn configure(ns: &NetNs, address: &str) -> Result<(), Error> {
    let netlink = Netlink::connect_in(ns)?;
    netlink.loopback_up().await?;
    let link = netlink.link_by_name("tun0").await?.ok_or("tun0 vanished")?;
    netlink.add_address(&link, address.parse()?).await?;
    netlink.set_up(link.index, "tun0").await?;
    Ok(())
}

/// Copies packets from one queue to the other, a batch per wake-up.
async fn shuttle(from: Arc<AsyncQueue>, to: Arc<AsyncQueue>) -> std::io::Result<()> {
    let mut bufs = vec![vec![0u8; 65_536]; 32];
    let mut lens = vec![0usize; 32];
    loop {
        let n = from.recv_many(&mut bufs, &mut lens).await?;
        for (buf, len) in bufs.iter().zip(&lens).take(n) {
            to.send(&buf[..*len]).await?;
        }
    }
}
