//! The TCP handshake that gives every rank the same few bytes from rank 0: NCCL's unique id,
//! made by rank 0 and needed by all ranks before any of them can join the communicator.
//!
//! Rank 0 listens at MASTER_ADDR:MASTER_PORT and answers each other rank once; the others
//! retry their connection until a deadline, so ranks may start in any order. Each side checks
//! the other's world size, so ranks of two different runs on one port fail loudly instead of
//! joining a communicator that never forms.

use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Tags the handshake, so a stray client on the port is refused rather than misread.
const MAGIC: [u8; 8] = *b"LDMSRDV1";
/// How long a rank waits between attempts to reach rank 0.
const RETRY: Duration = Duration::from_millis(100);

/// Where rank 0 listens and how long the handshake may take.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    /// This process's rank.
    pub rank: usize,
    /// Number of ranks.
    pub world_size: usize,
    /// Host of rank 0.
    pub master_addr: String,
    /// Port of rank 0.
    pub master_port: u16,
    /// The longest any rank waits for the others.
    pub timeout: Duration,
}

/// Why the handshake failed.
#[derive(Debug)]
pub struct RendezvousError {
    message: String,
}

impl fmt::Display for RendezvousError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RendezvousError {}

fn fail(message: impl Into<String>) -> RendezvousError {
    RendezvousError {
        message: message.into(),
    }
}

impl Rendezvous {
    /// Rank 0 sends `payload` to every other rank and returns it; the others return what
    /// rank 0 sent (`payload` is ignored there). Every rank must call it with the same
    /// world size and payload length.
    pub fn share(&self, payload: &[u8]) -> Result<Vec<u8>, RendezvousError> {
        if self.rank >= self.world_size {
            return Err(fail(format!(
                "rank {} is outside a world of {}",
                self.rank, self.world_size
            )));
        }
        if self.rank == 0 {
            self.serve(payload)?;
            Ok(payload.to_vec())
        } else {
            self.fetch(payload.len())
        }
    }

    fn address(&self) -> String {
        format!("{}:{}", self.master_addr, self.master_port)
    }

    fn socket_addr(&self) -> Result<SocketAddr, RendezvousError> {
        let address = self.address();
        address
            .to_socket_addrs()
            .map_err(|e| fail(format!("master address {address}: {e}")))?
            .next()
            .ok_or_else(|| fail(format!("master address {address} resolves to nothing")))
    }

    /// Rank 0: answers world_size - 1 distinct ranks before the deadline.
    fn serve(&self, payload: &[u8]) -> Result<(), RendezvousError> {
        let address = self.address();
        let listener = TcpListener::bind(self.socket_addr()?).map_err(|e| {
            fail(format!(
                "rank 0 cannot listen on {address}: {e} (another run on this port? set \
                 MASTER_PORT or --master-port)"
            ))
        })?;
        listener
            .set_nonblocking(true)
            .map_err(|e| fail(format!("{address}: {e}")))?;
        let deadline = Instant::now() + self.timeout;
        let mut joined = vec![false; self.world_size];
        joined[0] = true;
        while joined.iter().any(|j| !j) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    let rank = self.answer(stream, payload, &mut joined).map_err(|e| {
                        fail(format!("rank 0 at {address}, a rank from {peer}: {e}"))
                    })?;
                    joined[rank] = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(self.missing(&joined));
                    }
                    std::thread::sleep(RETRY / 10);
                }
                Err(e) => return Err(fail(format!("rank 0 at {address}: {e}"))),
            }
        }
        Ok(())
    }

    /// Reads a joining rank's greeting, checks it and sends the payload; returns its rank.
    fn answer(
        &self,
        mut stream: TcpStream,
        payload: &[u8],
        joined: &mut [bool],
    ) -> Result<usize, String> {
        stream.set_nonblocking(false).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(self.timeout))
            .map_err(|e| e.to_string())?;
        let (rank, world, length) = read_greeting(&mut stream)?;
        if world != self.world_size || length != payload.len() {
            return Err(format!(
                "it expects a world of {world} and {length} bytes, rank 0 a world of {} and \
                 {} bytes: two runs share this port, or the ranks were started differently",
                self.world_size,
                payload.len()
            ));
        }
        if rank == 0 || rank >= world || joined[rank] {
            return Err(format!("rank {rank} joined twice or is not a joining rank"));
        }
        stream.write_all(payload).map_err(|e| e.to_string())?;
        Ok(rank)
    }

    fn missing(&self, joined: &[bool]) -> RendezvousError {
        let absent: Vec<String> = (0..joined.len())
            .filter(|&r| !joined[r])
            .map(|r| r.to_string())
            .collect();
        fail(format!(
            "rank 0 at {}: rank(s) {} did not join within {:?}; were all {} ranks started, \
             with the same MASTER_ADDR and MASTER_PORT?",
            self.address(),
            absent.join(", "),
            self.timeout,
            self.world_size
        ))
    }

    /// A joining rank: connects (retrying until the deadline), greets, reads the payload.
    fn fetch(&self, length: usize) -> Result<Vec<u8>, RendezvousError> {
        let address = self.address();
        let target = self.socket_addr()?;
        let deadline = Instant::now() + self.timeout;
        let mut stream = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match TcpStream::connect_timeout(&target, left.max(RETRY).min(Duration::from_secs(5))) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() + RETRY < deadline => {
                    tracing::debug!("rank {}: {address} not reachable yet: {e}", self.rank);
                    std::thread::sleep(RETRY);
                }
                Err(e) => {
                    return Err(fail(format!(
                        "rank {}: rank 0 at {address} was not reachable within {:?} ({e}); \
                         is rank 0 running, and are MASTER_ADDR and MASTER_PORT its host and \
                         a free port?",
                        self.rank, self.timeout
                    )));
                }
            }
        };
        let io = |e: std::io::Error| fail(format!("rank {}: rank 0 at {address}: {e}", self.rank));
        stream.set_read_timeout(Some(self.timeout)).map_err(io)?;
        stream
            .write_all(&greeting(self.rank, self.world_size, length))
            .map_err(io)?;
        let mut payload = vec![0u8; length];
        stream.read_exact(&mut payload).map_err(|e| {
            fail(format!(
                "rank {}: rank 0 at {address} closed the handshake ({e}); its log says why",
                self.rank
            ))
        })?;
        Ok(payload)
    }
}

fn greeting(rank: usize, world: usize, length: usize) -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    for n in [rank, world, length] {
        bytes.extend((n as u64).to_le_bytes());
    }
    bytes
}

fn read_greeting(stream: &mut TcpStream) -> Result<(usize, usize, usize), String> {
    let mut bytes = [0u8; 32];
    stream.read_exact(&mut bytes).map_err(|e| e.to_string())?;
    if bytes[..8] != MAGIC {
        return Err("not an ldmscale rank (wrong greeting)".into());
    }
    let field = |i: usize| {
        let mut n = [0u8; 8];
        n.copy_from_slice(&bytes[8 + 8 * i..16 + 8 * i]);
        u64::from_le_bytes(n) as usize
    };
    Ok((field(0), field(1), field(2)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn at(rank: usize, world_size: usize, port: u16, timeout_ms: u64) -> Rendezvous {
        Rendezvous {
            rank,
            world_size,
            master_addr: "127.0.0.1".into(),
            master_port: port,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[test]
    fn every_rank_gets_rank_zeros_bytes_whatever_the_start_order() {
        let port = free_port();
        let id: Vec<u8> = (0..128).map(|i| (i * 7 % 251) as u8).collect();
        // The joining ranks start first and must wait for rank 0.
        let joiners: Vec<_> = (1..4)
            .map(|r| std::thread::spawn(move || at(r, 4, port, 5000).share(&[0u8; 128])))
            .collect();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(at(0, 4, port, 5000).share(&id).unwrap(), id);
        for j in joiners {
            assert_eq!(j.join().unwrap().unwrap(), id);
        }
    }

    #[test]
    fn an_unreachable_rank_zero_is_named_after_the_timeout() {
        let port = free_port();
        let started = Instant::now();
        let e = at(1, 2, port, 400).share(&[0u8; 16]).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(300));
        let text = e.to_string();
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(text.contains("not reachable"), "{text}");
    }

    #[test]
    fn rank_zero_names_the_ranks_that_never_joined() {
        let port = free_port();
        let joiner = std::thread::spawn(move || at(1, 3, port, 3000).share(&[0u8; 8]));
        let e = at(0, 3, port, 600).share(&[1u8; 8]).unwrap_err();
        assert!(e.to_string().contains("rank(s) 2 did not join"), "{e}");
        assert!(joiner.join().unwrap().is_ok());
    }

    #[test]
    fn ranks_of_a_different_world_are_refused() {
        let port = free_port();
        let joiner = std::thread::spawn(move || at(1, 3, port, 3000).share(&[0u8; 8]));
        let e = at(0, 2, port, 3000).share(&[1u8; 8]).unwrap_err();
        assert!(e.to_string().contains("two runs share this port"), "{e}");
        assert!(joiner.join().unwrap().is_err());
    }

    #[test]
    fn a_rank_outside_the_world_is_refused() {
        let e = at(2, 2, 1, 100).share(&[]).unwrap_err();
        assert!(e.to_string().contains("outside a world of 2"), "{e}");
    }
}
