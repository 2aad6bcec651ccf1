//! Git fixtures: repositories made by the tests themselves, and `git daemon` on loopback for
//! `git://` URLs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs git with a fixed identity; panics with git's stderr on failure. Returns stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let identity = ["-c", "user.name=krops test", "-c", "user.email=test@example.invalid"];
    let mut command = Command::new("git");
    command.arg("-C").arg(dir).args(identity).args(["-c", "protocol.file.allow=always"]).args(args);
    crate::command::output(&mut command, None).unwrap_or_else(|e| panic!("{e}")).trim().to_owned()
}

/// A repository on the deploying machine.
pub struct Repo {
    pub dir: PathBuf,
}

impl Repo {
    /// `git init` with branch `main`.
    pub fn init(dir: PathBuf) -> Repo {
        std::fs::create_dir_all(&dir).expect("mkdir repo");
        git(&dir, &["init", "-q", "-b", "main"]);
        Repo { dir }
    }

    /// Writes `file` and commits it; returns the commit id.
    pub fn commit(&self, file: &str, contents: &str) -> String {
        let path = self.dir.join(file);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, contents).expect("write");
        git(&self.dir, &["add", "--", file]);
        git(&self.dir, &["commit", "-q", "-m", &format!("{file}: {contents}")]);
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.dir, &["rev-parse", "HEAD"])
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.dir.display())
    }
}

/// `git daemon` serving every repository below `base` on 127.0.0.1; killed on drop.
pub struct Daemon {
    pub port: u16,
    child: Child,
}

impl Daemon {
    pub fn start(base: &Path) -> Daemon {
        let port =
            std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
        // `git daemon` would run git-daemon as its child, which killing `git` leaves behind;
        // starting git-daemon itself makes the PID we kill the daemon's.
        let exec_path = git(Path::new("/"), &["--exec-path"]);
        let child = Command::new(Path::new(&exec_path).join("git-daemon"))
            .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("git daemon starts");
        let daemon = Daemon { port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "git daemon did not listen");
            std::thread::sleep(Duration::from_millis(10));
        }
        daemon
    }

    /// `git://127.0.0.1:PORT/<path below base>`.
    pub fn url(&self, path: &str) -> String {
        format!("git://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// git's smart HTTP protocol on 127.0.0.1: a minimal HTTP/1.1 server that hands every request
/// to `git http-backend` (CGI) for the repositories below `base`; one request per connection.
pub struct HttpServer {
    pub port: u16,
    stopping: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl HttpServer {
    pub fn start(base: &Path) -> HttpServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("address").port();
        let stopping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let base = base.to_owned();
        let stop = stopping.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let base = base.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, &base);
                });
            }
        });
        HttpServer { port, stopping }
    }

    /// `http://127.0.0.1:PORT/<path below base>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn serve(stream: std::net::TcpStream, base: &Path) -> std::io::Result<()> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or("GET").to_owned(), parts.next().unwrap_or("/").to_owned());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        }
    }
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let mut body = Vec::new();
    if let Some(length) = header("content-length").and_then(|l| l.parse::<usize>().ok()) {
        body.resize(length, 0);
        reader.read_exact(&mut body)?;
    } else if header("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size)?;
            let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk)?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let mut cgi = Command::new("git");
    cgi.arg("http-backend")
        .env("GIT_PROJECT_ROOT", base)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", &method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    if let Some(protocol) = header("git-protocol") {
        cgi.env("HTTP_GIT_PROTOCOL", protocol);
    }
    if let Some(encoding) = header("content-encoding") {
        cgi.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let mut child = cgi.spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(&body)?;
    }
    let output = child.wait_with_output()?;
    let split = output.stdout.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let split = split.or_else(|| output.stdout.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2)));
    let (head, content) = match split {
        Some((i, skip)) => {
            (String::from_utf8_lossy(&output.stdout[..i]).into_owned(), &output.stdout[i + skip..])
        }
        None => (String::new(), &output.stdout[..]),
    };
    let mut status = "200 OK".to_owned();
    let mut response_headers = String::new();
    for line in head.lines() {
        match line.split_once(':') {
            Some((name, value)) if name.eq_ignore_ascii_case("status") => status = value.trim().to_owned(),
            Some(_) => response_headers.push_str(&format!("{}\r\n", line.trim_end())),
            None => {}
        }
    }
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\n{response_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        content.len()
    )?;
    stream.write_all(content)?;
    stream.flush()
}
