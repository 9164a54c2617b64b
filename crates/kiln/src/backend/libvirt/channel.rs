//! A domain's agent channel, tunnelled through the libvirt connection
//! (`virDomainOpenChannel`). This is how kiln reaches the agent of a VM on a remote host,
//! where the channel's Unix socket is out of reach.
//!
//! libvirt streams are blocking; two threads pump bytes between the stream and one end of an
//! in-memory duplex pipe, whose other end the async agent client reads and writes.

use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use virt::stream::Stream;
use virt::sys;

use super::{LibvirtConn, LibvirtError};

/// Bytes buffered in each direction of the pipe.
const PIPE_BUFFER: usize = 256 * 1024;
const CHUNK: usize = 64 * 1024;

impl LibvirtConn {
    /// Opens the channel `channel` of the running domain `name`. An earlier session on the
    /// channel is taken over (a client that died leaves one behind).
    pub async fn open_channel(
        &self,
        name: &str,
        channel: &str,
    ) -> Result<DuplexStream, LibvirtError> {
        let (name, channel) = (name.to_owned(), channel.to_owned());
        let stream = self
            .call(move |inner| {
                let dom = inner.require_domain(&name)?;
                let stream =
                    Stream::new(&inner.conn, 0).map_err(inner.err("open a stream for", &name))?;
                dom.open_channel(Some(&channel), &stream, sys::VIR_DOMAIN_CHANNEL_FORCE)
                    .map_err(inner.err("open the channel of", &name))?;
                Ok(stream)
            })
            .await?;
        let (ours, theirs) = tokio::io::duplex(PIPE_BUFFER);
        let (mut from_client, mut to_client) = tokio::io::split(theirs);
        let runtime = tokio::runtime::Handle::current();

        // Guest -> client. Ends when the stream does, or when the client has gone.
        let receiving = stream.clone();
        let handle = runtime.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match receiving.recv(&mut buf) {
                    Ok(n) if n > 0 => n.unsigned_abs(),
                    Ok(_) => break,
                    Err(err) => {
                        log::debug!("agent channel closed: {err}");
                        break;
                    }
                };
                if handle.block_on(to_client.write_all(&buf[..n])).is_err() {
                    break;
                }
            }
            let _ = handle.block_on(to_client.shutdown());
        });

        // Client -> guest. When the client closes its end, aborting the stream also wakes
        // the receiving thread.
        std::thread::spawn(move || {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match runtime.block_on(from_client.read(&mut buf)) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                if !send_all(&stream, &buf[..n]) {
                    break;
                }
            }
            if let Err(err) = stream.abort() {
                log::debug!("closing the agent channel: {err}");
            }
        });
        Ok(ours)
    }
}

fn send_all(stream: &Stream, mut data: &[u8]) -> bool {
    while !data.is_empty() {
        match stream.send(data) {
            Ok(n) if n > 0 => data = &data[n.unsigned_abs()..],
            Ok(_) => return false,
            Err(err) => {
                log::debug!("agent channel send failed: {err}");
                return false;
            }
        }
    }
    true
}
