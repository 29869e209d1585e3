//! binance-provider: a tiny HTTP service of the example stack.
//!
//! GET /health  -> 200 {"status":"ok"}                 (the container healthcheck)
//! GET /        -> 200 {"service":...,"version":...}
//! GET /stats   -> 200 {"requests":N}  N persists in $DATA_DIR/requests (the
//!                 `binance-analytics` volume), so it survives every update.
//!
//! `binance-provider healthcheck` GETs /health on 127.0.0.1 and exits 0 if it answers 200:
//! the runtime image has no shell or curl, so the binary checks itself.

use std::env;
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

const VERSION: &str = match option_env!("APP_VERSION") {
    Some(v) => v,
    None => env!("CARGO_PKG_VERSION"),
};

fn port() -> u16 {
    env::var("PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080)
}

fn data_file() -> PathBuf {
    PathBuf::from(env::var("DATA_DIR").unwrap_or_else(|_| "/data".into())).join("requests")
}

struct Counter {
    n: AtomicU64,
    path: PathBuf,
}

impl Counter {
    fn load(path: PathBuf) -> Counter {
        let n = fs::read_to_string(&path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
        Counter { n: AtomicU64::new(n), path }
    }

    fn bump(&self) -> u64 {
        let n = self.n.fetch_add(1, Ordering::SeqCst) + 1;
        let tmp = self.path.with_extension("tmp");
        // Best effort: a read-only or missing volume must not take the service down.
        if fs::write(&tmp, n.to_string()).is_ok() {
            let _ = fs::rename(&tmp, &self.path);
        }
        n
    }
}

fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn handle(mut stream: TcpStream, counter: &Counter) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Drain the headers; the bodies of these GETs are ignored.
    let mut header = String::new();
    while reader.read_line(&mut header).map(|n| n > 2).unwrap_or(false) {
        header.clear();
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/health") => respond(&mut stream, "200 OK", r#"{"status":"ok"}"#),
        ("GET", "/") => respond(
            &mut stream,
            "200 OK",
            &format!(r#"{{"service":"binance-provider","version":"{VERSION}"}}"#),
        ),
        ("GET", "/stats") => {
            let n = counter.bump();
            respond(&mut stream, "200 OK", &format!(r#"{{"requests":{n}}}"#))
        }
        ("GET", _) => respond(&mut stream, "404 Not Found", r#"{"error":"not found"}"#),
        _ => respond(&mut stream, "405 Method Not Allowed", r#"{"error":"method not allowed"}"#),
    }
}

fn healthcheck() -> ExitCode {
    let addr = format!("127.0.0.1:{}", port());
    let Ok(mut s) = TcpStream::connect_timeout(&addr.parse().expect("address"), Duration::from_secs(2))
    else {
        return ExitCode::FAILURE;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return ExitCode::FAILURE;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    if buf.starts_with("HTTP/1.1 200") {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    if env::args().nth(1).as_deref() == Some("healthcheck") {
        return healthcheck();
    }
    let counter = Arc::new(Counter::load(data_file()));
    let listener = match TcpListener::bind(("0.0.0.0", port())) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("binance-provider: cannot listen on port {}: {e}", port());
            return ExitCode::FAILURE;
        }
    };
    eprintln!("binance-provider {VERSION} listening on :{}", port());
    for stream in listener.incoming().flatten() {
        let counter = Arc::clone(&counter);
        thread::spawn(move || handle(stream, &counter));
    }
    ExitCode::SUCCESS
}
