//! A minimal keep-alive HTTP/1.1 client: one request at a time on one TCP
//! connection. Used by the API publisher and the long-poll transport.
//!
//! Bytes and statuses only: it must not know Phoenix, sessions or the
//! gateway's API (its callers do).

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Longest status or header line accepted.
const MAX_LINE: u64 = 8192;
/// Largest response body accepted.
const MAX_BODY: usize = 64 << 20;

/// Splits `http://host:port/path?query` into (`host:port`, `/path?query`).
pub(crate) fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url:?} does not start with http://"))?;
    Ok(match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], &rest[i..]),
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    })
}

/// One keep-alive connection.
pub(crate) struct Conn {
    host: String,
    io: BufReader<TcpStream>,
}

impl Conn {
    pub(crate) fn new(stream: TcpStream, host: &str) -> Conn {
        Conn {
            host: host.to_string(),
            io: BufReader::with_capacity(4096, stream),
        }
    }

    async fn line(&mut self, buf: &mut String) -> anyhow::Result<()> {
        buf.clear();
        let n = (&mut self.io).take(MAX_LINE).read_line(buf).await?;
        if n == 0 {
            bail!("the server closed the connection");
        }
        if !buf.ends_with('\n') {
            bail!("HTTP line too long");
        }
        Ok(())
    }

    /// Sends one request and reads its answer: (status, body). `headers` are
    /// extra header lines, each ending in `\r\n`.
    pub(crate) async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{headers}",
            self.host
        );
        if method != "GET" || !body.is_empty() {
            req += &format!("Content-Length: {}\r\n", body.len());
        }
        req += "\r\n";
        let mut req = req.into_bytes();
        req.extend_from_slice(body);
        self.io.get_mut().write_all(&req).await?;

        let mut line = String::new();
        self.line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("bad HTTP status line")?;
        let mut len = None;
        let mut chunked = false;
        loop {
            self.line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = Some(v.trim().parse::<usize>().context("bad content-length")?);
                } else if k.eq_ignore_ascii_case("transfer-encoding") {
                    chunked = v.to_ascii_lowercase().contains("chunked");
                }
            }
        }
        let mut out = Vec::new();
        if chunked {
            loop {
                self.line(&mut line).await?;
                let size = line.trim_end().split(';').next().unwrap_or("");
                let size = usize::from_str_radix(size.trim(), 16).context("bad chunk size")?;
                if out.len() + size > MAX_BODY {
                    bail!("HTTP body too large");
                }
                if size == 0 {
                    // trailers, up to the empty line
                    loop {
                        self.line(&mut line).await?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let at = out.len();
                out.resize(at + size, 0);
                self.io.read_exact(&mut out[at..]).await?;
                self.line(&mut line).await?;
            }
        } else if let Some(len) = len {
            if len > MAX_BODY {
                bail!("HTTP body too large");
            }
            out.resize(len, 0);
            self.io.read_exact(&mut out).await?;
        } else if !(100..200).contains(&status) && status != 204 && status != 304 {
            bail!("HTTP answer without a length");
        }
        Ok((status, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:4000/socket/longpoll?vsn=2.0.0").unwrap(),
            ("127.0.0.1:4000", "/socket/longpoll?vsn=2.0.0")
        );
        assert_eq!(split_url("http://h:1").unwrap(), ("h:1", "/"));
        assert_eq!(split_url("http://h:1?a=b").unwrap(), ("h:1", "?a=b"));
        assert!(split_url("ws://h:1/").is_err());
    }

    #[tokio::test]
    async fn answers_with_length_or_chunks_are_read_on_one_connection() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello")
                .await
                .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(b"garbage\r\n\r\n").await.unwrap();
        });
        let mut c = Conn::new(TcpStream::connect(addr).await.unwrap(), "x");
        let r = c.request("GET", "/", "", b"").await.unwrap();
        assert_eq!((r.0, r.1.as_slice()), (200, &b"hello"[..]));
        let r = c.request("POST", "/", "", b"body").await.unwrap();
        assert_eq!((r.0, r.1.as_slice()), (201, &b"abcde"[..]));
        assert!(c.request("GET", "/", "", b"").await.is_err());
    }
}
