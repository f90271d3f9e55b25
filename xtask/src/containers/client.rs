//! Clients of the container test, each in a container of its own on the compose `edge` network,
//! so that Envoy sees each with its own address, as it sees real clients.
//!
//! The client is this very program (`xtask container-client ENVOY_HOST:PORT`, the Envoy service it
//! sends every request to), mounted into a container of
//! the Debian base image. It reads one command per line on stdin and answers on stdout:
//!
//! | command | answer |
//! | --- | --- |
//! | `get PATH [KEY]` | one [`Reply`] line (`KEY` goes in `x-api-key`) |
//! | `load PATH PREFIX PER_KEY RATE MAX_MS` | `started`: a paced background load whose request `n` carries the key `PREFIX-(n / PER_KEY)` |
//! | `progress` | `TOTAL COUNTED` so far |
//! | `stop` | one [`Record`] line per request of the load, then `end` |
//! | `drain PATH KEY MAX` | `COUNTED_ADMITTED STATUS`: requests with `KEY` until one is denied (at most `MAX`) |
//!
//! [`Client`] is the test's side: it starts the container and speaks this protocol.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::{http_request, HttpResponse};

use super::docker::{docker, Project};

/// What a client saw for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// 0 when no response arrived.
    pub status: u16,
    /// `Retry-After`, in seconds.
    pub retry_after: Option<u64>,
    /// The response carried RateLimit headers: limitd decided (and counted) it. A request let
    /// through by the failure mode has none.
    pub counted: bool,
    /// The `t=` of the RateLimit header: seconds until the window resets.
    pub reset_s: Option<u64>,
    /// The backend that answered, from its body.
    pub instance: Option<String>,
}

/// One request of a load.
#[derive(Debug, Clone)]
pub struct Record {
    pub sent_unix_ms: u64,
    pub key: String,
    pub reply: Reply,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------------
// Inside the client container

fn reply_of(response: &std::io::Result<HttpResponse>) -> Reply {
    let Ok(response) = response else {
        return Reply {
            status: 0,
            retry_after: None,
            counted: false,
            reset_s: None,
            instance: None,
        };
    };
    let ratelimit = response.header("ratelimit");
    let reset_s = ratelimit.and_then(|value| {
        value
            .split(';')
            .find_map(|part| part.trim().strip_prefix("t="))
            .and_then(|t| t.trim().parse().ok())
    });
    let instance = response
        .body
        .split("\"instance\":\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(str::to_owned);
    Reply {
        status: response.status,
        retry_after: response
            .header("retry-after")
            .and_then(|v| v.trim().parse().ok()),
        counted: ratelimit.is_some(),
        reset_s,
        instance,
    }
}

fn get(to: SocketAddr, path: &str, key: Option<&str>) -> Reply {
    let headers: Vec<(&str, &str)> = key.map(|k| ("x-api-key", k)).into_iter().collect();
    reply_of(&http_request("GET", to, path, &headers, b"", None))
}

fn opt<T: ToString>(value: &Option<T>) -> String {
    value.as_ref().map_or("-".to_owned(), T::to_string)
}

fn format_reply(reply: &Reply) -> String {
    format!(
        "{} {} {} {} {}",
        reply.status,
        opt(&reply.retry_after),
        u8::from(reply.counted),
        opt(&reply.reset_s),
        opt(&reply.instance)
    )
}

fn parse_reply(words: &[&str]) -> Result<Reply, String> {
    let [status, retry_after, counted, reset_s, instance] = words else {
        return Err(format!("bad reply {words:?}"));
    };
    let number = |w: &str| (w != "-").then(|| w.parse().ok()).flatten();
    Ok(Reply {
        status: status.parse().map_err(|_| format!("bad status {status}"))?,
        retry_after: number(retry_after),
        counted: *counted == "1",
        reset_s: number(reset_s),
        instance: (*instance != "-").then(|| (*instance).to_owned()),
    })
}

/// A paced background load, its records kept until `stop`.
struct Load {
    stop: Arc<AtomicBool>,
    counted: Arc<AtomicU64>,
    records: Arc<Mutex<Vec<Record>>>,
    threads: Vec<JoinHandle<()>>,
}

const LOAD_THREADS: u64 = 4;

fn start_load(to: SocketAddr, words: &[&str]) -> Result<Load, String> {
    let [path, prefix, per_key, rate, max_ms] = words else {
        return Err(format!("load: bad arguments {words:?}"));
    };
    let per_key: u64 = per_key.parse().map_err(|_| "load: bad PER_KEY")?;
    let rate: f64 = rate.parse().map_err(|_| "load: bad RATE")?;
    let max = Duration::from_millis(max_ms.parse().map_err(|_| "load: bad MAX_MS")?);
    let stop = Arc::new(AtomicBool::new(false));
    let counted = Arc::new(AtomicU64::new(0));
    let sequence = Arc::new(AtomicU64::new(0));
    let records = Arc::new(Mutex::new(Vec::new()));
    let interval = Duration::from_secs_f64(LOAD_THREADS as f64 / rate);
    let started = Instant::now();
    let threads = (0..LOAD_THREADS)
        .map(|thread| {
            let (stop, counted, sequence, records) = (
                stop.clone(),
                counted.clone(),
                sequence.clone(),
                records.clone(),
            );
            let (path, prefix) = ((*path).to_owned(), (*prefix).to_owned());
            let mut next = started + interval.mul_f64(thread as f64 / LOAD_THREADS as f64);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && started.elapsed() < max {
                    let now = Instant::now();
                    if next > now {
                        std::thread::sleep(next - now);
                    }
                    next += interval;
                    let n = sequence.fetch_add(1, Ordering::Relaxed);
                    let key = format!("{prefix}-{}", n / per_key);
                    let sent_unix_ms = unix_ms();
                    let reply = get(to, &path, Some(&key));
                    if reply.counted {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                    if let Ok(mut records) = records.lock() {
                        records.push(Record {
                            sent_unix_ms,
                            key,
                            reply,
                        });
                    }
                }
            })
        })
        .collect();
    Ok(Load {
        stop,
        counted,
        records,
        threads,
    })
}

/// The client program: `xtask container-client ENVOY_HOST:PORT`.
pub fn serve(args: &[String]) -> Result<(), String> {
    let target = args.first().ok_or("usage: container-client HOST:PORT")?;
    let to = target
        .to_socket_addrs()
        .map_err(|e| format!("{target}: {e}"))?
        .next()
        .ok_or_else(|| format!("{target} has no address"))?;
    let mut out = std::io::stdout().lock();
    let mut load: Option<Load> = None;
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| e.to_string())?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["get", path] => format_reply(&get(to, path, None)),
            ["get", path, key] => format_reply(&get(to, path, Some(key))),
            ["load", rest @ ..] => {
                if let Some(old) = load.take() {
                    old.stop.store(true, Ordering::Relaxed);
                }
                load = Some(start_load(to, rest)?);
                "started".to_owned()
            }
            ["progress"] => match &load {
                Some(load) => {
                    let total = load.records.lock().map(|r| r.len()).unwrap_or(0);
                    format!("{total} {}", load.counted.load(Ordering::Relaxed))
                }
                None => "0 0".to_owned(),
            },
            ["stop"] => {
                let mut text = String::new();
                if let Some(load) = load.take() {
                    load.stop.store(true, Ordering::Relaxed);
                    for thread in load.threads {
                        let _ = thread.join();
                    }
                    let records = load.records.lock().map(|r| r.clone()).unwrap_or_default();
                    for record in records {
                        text.push_str(&format!(
                            "{} {} {}\n",
                            record.sent_unix_ms,
                            record.key,
                            format_reply(&record.reply)
                        ));
                    }
                }
                text.push_str("end");
                text
            }
            ["drain", path, key, max] => {
                let max: u32 = max.parse().map_err(|_| "drain: bad MAX")?;
                let mut admitted = 0;
                let mut last = 0;
                for _ in 0..max {
                    let reply = get(to, path, Some(key));
                    last = reply.status;
                    if reply.status == 429 {
                        break;
                    }
                    if reply.status == 200 && reply.counted {
                        admitted += 1;
                    }
                }
                format!("{admitted} {last}")
            }
            _ => format!("error unknown command {line:?}"),
        };
        writeln!(out, "{answer}").map_err(|e| e.to_string())?;
        out.flush().map_err(|e| e.to_string())?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The test's side

/// A client container and the pipes to the program in it.
pub struct Client {
    pub name: String,
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("name", &self.name).finish()
    }
}

impl Client {
    /// Starts client `label` on the project's `edge` network, in `image`, sending its requests
    /// to the compose service `envoy` (port 8000).
    pub fn start(
        project: &mut Project,
        label: &str,
        image: &str,
        envoy: &str,
    ) -> Result<Client, String> {
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let name = format!("{}-client-{label}", project.name);
        let target = format!("{envoy}:8000");
        project.own_container(&name);
        let mut child = Command::new("docker")
            .args([
                "run",
                "--rm",
                "-i",
                "--name",
                &name,
                "--label",
                &format!("ratelimit.container-test={}", project.name),
                "--network",
                &project.network("edge"),
                "-v",
                &format!("{}:/usr/local/bin/ratelimit-client:ro", exe.display()),
                "--entrypoint",
                "/usr/local/bin/ratelimit-client",
                image,
                "container-client",
                &target,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start client {name}: {e}"))?;
        let input = child.stdin.take().ok_or("client has no stdin")?;
        let output = BufReader::new(child.stdout.take().ok_or("client has no stdout")?);
        Ok(Client {
            name,
            child,
            input,
            output,
        })
    }

    /// The client's address on the `edge` network (what Envoy keys it by).
    pub fn address(&self, project: &Project) -> Result<String, String> {
        let network = project.network("edge");
        let format = format!("{{{{(index .NetworkSettings.Networks \"{network}\").IPAddress}}}}");
        // The container may take a moment to exist.
        e2e::eventually(Duration::from_secs(20), || {
            docker(&["inspect", "--format", &format, &self.name])
                .map(|ip| ip.trim().to_owned())
                .and_then(|ip| {
                    if ip.is_empty() {
                        Err("no address yet".to_owned())
                    } else {
                        Ok(ip)
                    }
                })
        })
    }

    fn line(&mut self) -> Result<String, String> {
        let mut line = String::new();
        let read = self
            .output
            .read_line(&mut line)
            .map_err(|e| format!("{}: {e}", self.name))?;
        if read == 0 {
            return Err(format!("client {} ended", self.name));
        }
        Ok(line.trim_end().to_owned())
    }

    fn ask(&mut self, command: &str) -> Result<String, String> {
        writeln!(self.input, "{command}")
            .and_then(|()| self.input.flush())
            .map_err(|e| format!("{}: {e}", self.name))?;
        self.line()
    }

    pub fn get(&mut self, path: &str, key: Option<&str>) -> Result<Reply, String> {
        let answer = self.ask(&format!("get {path} {}", key.unwrap_or("")))?;
        parse_reply(&answer.split_whitespace().collect::<Vec<_>>())
    }

    pub fn start_load(
        &mut self,
        path: &str,
        prefix: &str,
        per_key: u32,
        rate_per_s: u32,
        max: Duration,
    ) -> Result<(), String> {
        let answer = self.ask(&format!(
            "load {path} {prefix} {per_key} {rate_per_s} {}",
            max.as_millis()
        ))?;
        (answer == "started")
            .then_some(())
            .ok_or_else(|| format!("{}: load: {answer}", self.name))
    }

    /// Requests and counted decisions of the running load so far.
    pub fn progress(&mut self) -> Result<(u64, u64), String> {
        let answer = self.ask("progress")?;
        let mut words = answer.split_whitespace().map(str::parse::<u64>);
        match (words.next(), words.next()) {
            (Some(Ok(total)), Some(Ok(counted))) => Ok((total, counted)),
            _ => Err(format!("{}: progress: {answer}", self.name)),
        }
    }

    /// Waits until the load has `more` counted decisions beyond now.
    pub fn wait_counted(&mut self, more: u64, within: Duration) -> Result<(), String> {
        let (_, start) = self.progress()?;
        let deadline = Instant::now() + within;
        loop {
            let (total, counted) = self.progress()?;
            if counted >= start + more {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{}: the load got {} counted decisions of {more} within {within:?} ({total} requests)",
                    self.name,
                    counted - start
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn stop_load(&mut self) -> Result<Vec<Record>, String> {
        let mut line = self.ask("stop")?;
        let mut records = Vec::new();
        while line != "end" {
            let words: Vec<&str> = line.split_whitespace().collect();
            let [sent, key, reply @ ..] = words.as_slice() else {
                return Err(format!("{}: bad record {line:?}", self.name));
            };
            records.push(Record {
                sent_unix_ms: sent.parse().map_err(|_| format!("bad record {line:?}"))?,
                key: (*key).to_owned(),
                reply: parse_reply(reply)?,
            });
            line = self.line()?;
        }
        Ok(records)
    }

    /// Requests with `key` until one is denied: how many limitd admitted, and the last status.
    pub fn drain(&mut self, path: &str, key: &str, max: u32) -> Result<(u32, u16), String> {
        let answer = self.ask(&format!("drain {path} {key} {max}"))?;
        let mut words = answer.split_whitespace();
        match (
            words.next().and_then(|w| w.parse().ok()),
            words.next().and_then(|w| w.parse().ok()),
        ) {
            (Some(admitted), Some(status)) => Ok((admitted, status)),
            _ => Err(format!("{}: drain: {answer}", self.name)),
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = docker(&["rm", "-f", &self.name]);
        let _ = self.child.wait();
    }
}
