//! Small blocking clients for the harness: HTTP/1.1 (optionally from a chosen
//! loopback source address) and Redis RESP.

use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// An HTTP response, read whole.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first value of a header (name matched case-insensitively).
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `r` (remaining) parameter of rule `name`'s item in the `RateLimit` header (the IETF
    /// header style), if the header has one for it.
    pub fn remaining(&self, name: &str) -> Option<u64> {
        let header = self.header("ratelimit")?;
        let item = header
            .split(", ")
            .find(|item| item.starts_with(&format!("\"{name}\";")))?;
        item.split(';')
            .find_map(|p| p.strip_prefix("r="))
            .and_then(|r| r.parse().ok())
    }
}

fn connect(to: SocketAddr, from: Option<IpAddr>, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(ip) = from {
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&to.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Sends one HTTP/1.1 request and reads the whole response (the connection
/// is closed after it). `from` binds the client to a source address, e.g.
/// 127.0.0.2, so one machine can act as several clients.
pub fn http_request(
    method: &str,
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    from: Option<IpAddr>,
) -> io::Result<HttpResponse> {
    let mut stream = connect(to, from, Duration::from_secs(10))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {to}\r\nconnection: close\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    read_response(&mut BufReader::new(stream))
}

/// A kept-alive HTTP/1.1 connection: every request on it reaches the same
/// Envoy worker, which makes per-worker behaviour (round robin) observable.
#[derive(Debug)]
pub struct HttpConnection {
    to: SocketAddr,
    reader: BufReader<TcpStream>,
}

impl HttpConnection {
    pub fn open(to: SocketAddr, from: Option<IpAddr>) -> io::Result<HttpConnection> {
        Ok(HttpConnection {
            to,
            reader: BufReader::new(connect(to, from, Duration::from_secs(10))?),
        })
    }

    /// `GET path` on this connection.
    pub fn get(&mut self, path: &str) -> io::Result<HttpResponse> {
        self.get_with_host(path, &self.to.to_string())
    }

    /// `GET path` on this connection, with `host` as its `Host` header.
    pub fn get_with_host(&mut self, path: &str, host: &str) -> io::Result<HttpResponse> {
        let head = format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n");
        self.reader.get_mut().write_all(head.as_bytes())?;
        read_response(&mut self.reader)
    }
}

/// `GET path` from an optional source address.
pub fn http_get(to: SocketAddr, path: &str, from: Option<IpAddr>) -> io::Result<HttpResponse> {
    http_request("GET", to, path, &[], b"", from)
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn read_response(reader: &mut BufReader<TcpStream>) -> io::Result<HttpResponse> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (k, v) = trimmed
            .split_once(':')
            .ok_or_else(|| invalid(format!("bad header {trimmed:?}")))?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
    }
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let mut body = Vec::new();
    if chunked {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                break;
            }
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = length {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else {
        reader.read_to_end(&mut body)?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// A Redis reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resp {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<String>),
    Array(Option<Vec<Resp>>),
}

impl Resp {
    /// The reply as text, for simple strings and bulk strings.
    pub fn text(&self) -> Option<&str> {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => Some(s),
            _ => None,
        }
    }
}

/// The reply as `redis-cli` would print it, arrays one element a line: for a test that only
/// looks for a word in it.
impl fmt::Display for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resp::Simple(s) | Resp::Bulk(Some(s)) => f.write_str(s),
            Resp::Error(e) => write!(f, "(error) {e}"),
            Resp::Integer(n) => write!(f, "{n}"),
            Resp::Bulk(None) | Resp::Array(None) => f.write_str("(nil)"),
            Resp::Array(Some(items)) => {
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str("\n")?;
                    }
                    write!(f, "{item}")?;
                }
                Ok(())
            }
        }
    }
}

fn read_resp(reader: &mut impl BufRead) -> io::Result<Resp> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    let number = || {
        rest.parse::<i64>()
            .map_err(|_| invalid(format!("bad RESP line {line:?}")))
    };
    Ok(match kind {
        "+" => Resp::Simple(rest.to_owned()),
        "-" => Resp::Error(rest.to_owned()),
        ":" => Resp::Integer(number()?),
        "$" => match number()? {
            n if n < 0 => Resp::Bulk(None),
            n => {
                let mut bytes = vec![0; n as usize + 2];
                reader.read_exact(&mut bytes)?;
                bytes.truncate(n as usize);
                Resp::Bulk(Some(String::from_utf8_lossy(&bytes).into_owned()))
            }
        },
        "*" => match number()? {
            n if n < 0 => Resp::Array(None),
            n => Resp::Array(Some(
                (0..n)
                    .map(|_| read_resp(reader))
                    .collect::<io::Result<_>>()?,
            )),
        },
        _ => return Err(invalid(format!("bad RESP line {line:?}"))),
    })
}

/// Sends one command to a Redis (or Sentinel) on 127.0.0.1:`port` and reads its reply.
pub fn redis_command(port: u16, args: &[&str]) -> io::Result<Resp> {
    redis_command_as(port, None, args)
}

/// [`redis_command`] to a server that requires `password` (`AUTH` first, on the same
/// connection); a refused `AUTH` is the reply.
pub fn redis_command_as(port: u16, password: Option<&str>, args: &[&str]) -> io::Result<Resp> {
    let stream = connect(
        SocketAddr::from(([127, 0, 0, 1], port)),
        None,
        Duration::from_secs(2),
    )?;
    let mut request = String::new();
    if let Some(password) = password {
        encode_command(&mut request, &["AUTH", password]);
    }
    encode_command(&mut request, args);
    (&stream).write_all(request.as_bytes())?;
    let mut reader = BufReader::new(stream);
    if password.is_some() {
        if let error @ Resp::Error(_) = read_resp(&mut reader)? {
            return Ok(error);
        }
    }
    read_resp(&mut reader)
}

fn encode_command(request: &mut String, args: &[&str]) {
    request.push_str(&format!("*{}\r\n", args.len()));
    for arg in args {
        request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
    }
}
