//! Reaching a HOST:PORT through a SOCKS5 proxy (Tor, say), which resolves the name itself, so
//! an onion name works and our resolver never sees it.

use tokio::net::TcpStream;

/// A TCP stream to `address` (HOST:PORT, IPv6 in brackets) through the SOCKS5 proxy at
/// `proxy`. The error is the reason in words; callers say who could not be reached.
pub async fn socks5_tcp(proxy: &str, address: &str) -> Result<TcpStream, String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("{address} has no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{address} has a bad port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    tokio_socks::tcp::Socks5Stream::connect(proxy, (host, port))
        .await
        .map(|s| s.into_inner())
        .map_err(|e| e.to_string())
}
