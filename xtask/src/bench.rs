//! `cargo xtask bench`: krops against a baseline doing what the original krops does, in the
//! same process, on a real sshd test host behind a latency proxy. Reports medians and ratios,
//! never asserts on time.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use krops_tests::hosts::{Login, TestHost};
use krops_tests::proxy::DelayProxy;

const ROUNDS: usize = 5;

pub fn run_all(build_dir: &Path) -> Result<()> {
    plugins_start_up(build_dir)?;
    noop_redeploy(build_dir, Duration::from_millis(25))?;
    fleet(build_dir, 20)?;
    deployer_cost(build_dir, &[20, 50, 100])?;
    big_tree(build_dir, 100_000)?;
    passage_secrets(build_dir, 1000)?;
    pass_secrets(build_dir, 200)
}

/// `krops plugins` (every plugin probed and loaded), median of 20.
fn plugins_start_up(build_dir: &Path) -> Result<()> {
    let krops = build_dir.join("krops");
    let times: Vec<Duration> = (0..20)
        .map(|_| {
            let started = Instant::now();
            run_quiet(Command::new(&krops).arg("plugins"))?;
            Ok(started.elapsed())
        })
        .collect::<Result<_>>()?;
    println!("krops plugins start-up (7 plugins, each probed then loaded), median of 20:");
    println!("  {:<42} {:>7.1} ms", "krops plugins:", median(times).as_secs_f64() * 1000.0);
    Ok(())
}

/// One deployment per host to `count` hosts versus the same to one host, with the default key
/// exchange and with curve25519 (OpenSSH's default sntrup761 costs far more CPU per handshake,
/// which on 2 cores is what many hosts at once wait for).
fn fleet(build_dir: &Path, count: usize) -> Result<()> {
    let hosts: Vec<TestHost> = (0..count).map(|i| TestHost::start(&format!("krops-fleet-{i}"))).collect();
    let work = tempfile::tempdir()?;
    std::fs::write(work.path().join("configuration.nix"), "{ ... }: { }\n")?;
    let krops = build_dir.join("krops");
    for kex in [None, Some("curve25519-sha256")] {
        let config = |n: usize| -> Result<std::path::PathBuf> {
            let mut toml = String::new();
            for (i, host) in hosts.iter().take(n).enumerate() {
                std::fs::write(host.var_src().join(".populate"), "")?;
                let mut target = host.target_toml(Login::Root, host.port, "/var/src");
                if let Some(kex) = kex {
                    target = target.replacen(
                        "extraOptions = [",
                        &format!("extraOptions = [\"-o\", \"KexAlgorithms={kex}\", "),
                        1,
                    );
                }
                toml.push_str(&format!(
                    "[deployments.h{i}]\ntarget = {target}\n[deployments.h{i}.source]\nnixos-config.file = \"configuration.nix\"\ninfo.pipe = \"echo {i}\"\n"
                ));
            }
            let path = work.path().join(format!("fleet-{n}.toml"));
            std::fs::write(&path, toml)?;
            Ok(path)
        };
        let (one, all) = (config(1)?, config(count)?);
        let time = |config: &Path| -> Result<Duration> {
            let times: Vec<Duration> = (0..3)
                .map(|_| {
                    let started = Instant::now();
                    run_quiet(Command::new(&krops).args(["-q", "-f"]).arg(config).arg("populate"))?;
                    Ok(started.elapsed())
                })
                .collect::<Result<_>>()?;
            Ok(median(times))
        };
        let (t1, tn) = (time(&one)?, time(&all)?);
        println!(
            "{count} hosts vs 1 host, default settings, loopback, key exchange {}, median of 3:",
            kex.unwrap_or("OpenSSH's default")
        );
        println!("  {:<42} {:>7.0} ms", "1 host:", t1.as_secs_f64() * 1000.0);
        println!("  {:<42} {:>7.0} ms", format!("{count} hosts:"), tn.as_secs_f64() * 1000.0);
        println!(
            "  {:<42} {:>7.2}x",
            format!("ratio {count} hosts / 1 host:"),
            tn.as_secs_f64() / t1.as_secs_f64()
        );
    }
    Ok(())
}

/// What the deploying machine pays for a no-op redeploy of N hosts (one deployment each, a file
/// and a pipe source): CPU seconds of krops and everything it waited for (its ssh clients and
/// masters, local rsync), measured by GNU time, against N cold `ssh HOST true` clients started
/// at once; krops's own share (its process alone); and krops's peak memory per host. The
/// targets (sshd, curve25519 key exchange) are not counted. Median of 3, alternating.
pub fn deployer_cost(build_dir: &Path, counts: &[usize]) -> Result<()> {
    krops_tests::packages::ensure(&[("/usr/bin/time", "time")]).map_err(anyhow::Error::msg)?;
    let most = counts.iter().copied().max().unwrap_or(0);
    let hosts: Vec<TestHost> = std::thread::scope(|scope| {
        let starters: Vec<_> = (0..10)
            .map(|t| {
                scope.spawn(move || {
                    (t * most / 10..(t + 1) * most / 10)
                        .map(|_| TestHost::start_light("krops-bench-cost"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        starters.into_iter().flat_map(|s| s.join().unwrap_or_default()).collect()
    });
    if hosts.len() != most {
        bail!("only {} of {most} hosts started", hosts.len());
    }
    let work = tempfile::tempdir()?;
    std::fs::write(work.path().join("configuration.nix"), "{ ... }: { }\n")?;
    let krops = build_dir.join("krops");
    println!("deployer cost of a no-op redeploy (CPU of krops + its ssh and rsync; targets excluded), median of 3:");
    for &count in counts {
        let mut toml = String::new();
        for (i, host) in hosts.iter().take(count).enumerate() {
            std::fs::write(host.var_src().join(".populate"), "")?;
            let target = host.target_toml(Login::Root, host.port, "/var/src");
            toml.push_str(&format!(
                "[deployments.h{i}]\ntarget = {target}\n[deployments.h{i}.source]\nnixos-config.file = \"configuration.nix\"\ninfo.pipe = \"echo {i}\"\n"
            ));
        }
        let config = work.path().join(format!("cost-{count}.toml"));
        std::fs::write(&config, toml)?;
        run_quiet(Command::new(&krops).args(["-q", "-f"]).arg(&config).arg("populate"))?;
        let mut bare = String::from("for port in");
        for host in hosts.iter().take(count) {
            bare.push_str(&format!(" {}", host.port));
        }
        bare.push_str(&format!(
            "; do ssh {} -p \"$port\" root@127.0.0.1 true & done; wait",
            join(&TestHost::extra_options())?
        ));
        let (mut ours, mut theirs, mut own, mut peaks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..3 {
            ours.push(cpu_of(Command::new(&krops).args(["-q", "-f"]).arg(&config).arg("populate"))?);
            theirs.push(cpu_of(Command::new("/bin/sh").args(["-c", &bare]))?);
            let (peak, self_cpu) = peak_rss_and_own_cpu(&krops, &config)?;
            peaks.push(Duration::from_millis(peak));
            own.push(self_cpu);
        }
        let (k, b, o) = (median(ours), median(theirs), median(own));
        let peak_kb = median(peaks).as_millis() as f64;
        println!("  {count} hosts:");
        println!("    {:<40} {:>7.2} s", "krops no-op (krops + ssh + rsync):", k.as_secs_f64());
        println!("    {:<40} {:>7.2} s", format!("{count} x cold `ssh HOST true`:"), b.as_secs_f64());
        println!("    {:<40} {:>7.2}x", "ratio:", k.as_secs_f64() / b.as_secs_f64());
        println!(
            "    {:<40} {:>7.2} s ({:.0}%)",
            "krops's own process:",
            o.as_secs_f64(),
            100.0 * o.as_secs_f64() / k.as_secs_f64()
        );
        println!(
            "    {:<40} {:>7.1} MB ({:.2} MB a host)",
            "krops's peak resident memory:",
            peak_kb / 1024.0,
            peak_kb / 1024.0 / count as f64
        );
    }
    Ok(())
}

/// User + system CPU of `command` and every descendant it waited for, as GNU time reports it.
fn cpu_of(command: &mut Command) -> Result<Duration> {
    let report = tempfile::NamedTempFile::new()?;
    let mut timed = Command::new("/usr/bin/time");
    timed.args(["-f", "%U %S", "-o"]).arg(report.path()).arg(command.get_program()).args(command.get_args());
    run_quiet(&mut timed)?;
    let text = std::fs::read_to_string(report.path())?;
    let seconds: f64 = text.split_whitespace().filter_map(|w| w.parse::<f64>().ok()).sum();
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs `krops populate` of `config`, sampling its process: peak resident memory (kB, `VmHWM`)
/// and the CPU of the process alone (utime + stime, the last sample before it exits).
fn peak_rss_and_own_cpu(krops: &Path, config: &Path) -> Result<(u64, Duration)> {
    let mut child = Command::new(krops)
        .args(["-q", "-f"])
        .arg(config)
        .arg("populate")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let (status_file, stat_file) =
        (format!("/proc/{}/status", child.id()), format!("/proc/{}/stat", child.id()));
    let (mut peak, mut ticks) = (0, 0);
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_file) {
            let hwm = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok());
            peak = peak.max(hwm.unwrap_or(0));
        }
        if let Ok(stat) = std::fs::read_to_string(&stat_file) {
            // After the command name (in parentheses, which may hold spaces): utime and stime
            // are fields 14 and 15.
            let fields: Vec<&str> =
                stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
            let sum = fields.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
                + fields.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
            ticks = ticks.max(sum);
        }
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("krops failed ({status})");
            }
            // The kernel's clock ticks are 100 a second on Linux.
            return Ok((peak, Duration::from_millis(ticks * 10)));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A 100k-file tree: a one-file change versus a no-op redeploy, and krops's peak memory.
fn big_tree(build_dir: &Path, files: usize) -> Result<()> {
    let host = TestHost::start("krops-bench-tree");
    std::fs::write(host.var_src().join(".populate"), "")?;
    // On tmpfs, as the host's files: disk file creation would dominate both sides.
    let work = tempfile::Builder::new().prefix("krops-bench-").tempdir_in("/dev/shm")?;
    let tree = work.path().join("tree");
    for i in 0..files {
        let dir = tree.join(format!("d{}", i / 1000));
        if i % 1000 == 0 {
            std::fs::create_dir_all(&dir)?;
        }
        std::fs::write(dir.join(format!("f{i}")), format!("{i}\n"))?;
    }
    let config = work.path().join("krops.toml");
    std::fs::write(
        &config,
        format!(
            "[deployments.tree]\ntarget = {}\nsource.tree.file = {:?}\n",
            host.target_toml(Login::Root, host.port, "/var/src"),
            tree.display().to_string()
        ),
    )?;
    let krops = build_dir.join("krops");
    let run = || -> Result<Duration> {
        let started = Instant::now();
        run_quiet(Command::new(&krops).args(["-q", "-f"]).arg(&config).arg("populate"))?;
        Ok(started.elapsed())
    };
    let peak = peak_rss_and_own_cpu(&krops, &config)?.0;
    let noop: Vec<Duration> = (0..3).map(|_| run()).collect::<Result<_>>()?;
    let changed: Vec<Duration> = (0..3)
        .map(|round| {
            std::fs::write(tree.join("d7/f7000"), format!("changed {round}\n"))?;
            run()
        })
        .collect::<Result<_>>()?;
    let (noop, changed) = (median(noop), median(changed));
    println!("{files}-file tree, 1 host, loopback, median of 3:");
    println!("  {:<42} {:>7.0} ms", "no-op redeploy:", noop.as_secs_f64() * 1000.0);
    println!("  {:<42} {:>7.0} ms", "one file changed:", changed.as_secs_f64() * 1000.0);
    println!("  {:<42} {:>7.2}x", "ratio one change / no-op:", changed.as_secs_f64() / noop.as_secs_f64());
    println!("  {:<42} {:>7.1} MB", "krops's peak RSS, first deploy of the tree:", peak as f64 / 1024.0);
    Ok(())
}

/// Times `krops populate` of `config` and `baseline`, each `rounds` times, alternating.
fn compare(
    krops: &Path,
    config: &Path,
    env: &[(&str, &Path)],
    rounds: usize,
    mut baseline: impl FnMut() -> Result<()>,
) -> Result<(Duration, Duration)> {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let started = Instant::now();
        let mut command = Command::new(krops);
        command.args(["-q", "-f"]).arg(config).arg("populate");
        for (key, value) in env {
            command.env(key, value);
        }
        run_quiet(&mut command)?;
        ours.push(started.elapsed());
        let started = Instant::now();
        baseline()?;
        theirs.push(started.elapsed());
    }
    Ok((median(ours), median(theirs)))
}

fn report(title: &str, ours: &str, theirs: &str, (k, b): (Duration, Duration)) {
    println!("{title}:");
    println!("  {ours:<42} {:>7.0} ms", k.as_secs_f64() * 1000.0);
    println!("  {theirs:<42} {:>7.0} ms", b.as_secs_f64() * 1000.0);
    println!("  {:<42} {:>7.2}x", "ratio baseline / krops:", b.as_secs_f64() / k.as_secs_f64());
}

/// `rsync -r DIR/ root@host:/var/src/NAME` as the original's last step, on a fresh connection.
fn rsync_dir(host: &TestHost, dir: &Path, name: &str) -> Result<()> {
    let options = join(&TestHost::extra_options())?;
    run_quiet(
        Command::new("rsync")
            .args(["-e", &format!("ssh -l root -p {} {options}", host.port), "-rlptD", "--delete"])
            .arg(format!("{}/", dir.display()))
            .arg(format!("root@127.0.0.1:/var/src/{name}")),
    )
}

/// Decrypting `count` passage secrets natively versus one `age -d` process per secret into a
/// temporary directory, then rsync (the original's approach); same host, no added latency.
fn passage_secrets(build_dir: &Path, count: usize) -> Result<()> {
    let host = TestHost::start("krops-bench");
    std::fs::write(host.var_src().join(".populate"), "")?;
    let work = tempfile::tempdir()?;
    let store = krops_tests::secrets::PassageStore::create(work.path(), false);
    for i in 0..count {
        store.insert(&format!("hosts/web/secret-{i:04}"), format!("secret number {i}\n").as_bytes());
    }
    let config = work.path().join("krops.toml");
    std::fs::write(
        &config,
        format!(
            "[deployments.bench]\ntarget = {}\n[deployments.bench.source.secrets.passage]\ndir = {:?}\nidentities_file = {:?}\n",
            host.target_toml(Login::Root, host.port, "/var/src"),
            store.store.display().to_string(),
            store.identities.display().to_string()
        ),
    )?;
    let files: Vec<_> = walk(&store.store, "age")?;
    let baseline = || -> Result<()> {
        let plain = tempfile::tempdir()?;
        for (path, relative) in &files {
            let out = plain.path().join(relative);
            std::fs::create_dir_all(out.parent().context("parent")?)?;
            run_quiet(
                Command::new("age").arg("-d").arg("-i").arg(&store.identities).arg("-o").arg(&out).arg(path),
            )?;
        }
        rsync_dir(&host, plain.path(), "secrets")
    };
    let times = compare(&build_dir.join("krops"), &config, &[], 3, baseline)?;
    report(
        &format!("{count} passage secrets to 1 host (loopback), median of 3"),
        "krops (native age, one tar stream):",
        "baseline (age -d per secret, then rsync):",
        times,
    );
    Ok(())
}

/// Decrypting `count` pass secrets with gpg processes run concurrently, straight into memory,
/// versus one `pass show` per secret into a temporary directory, then rsync (the original).
fn pass_secrets(build_dir: &Path, count: usize) -> Result<()> {
    let host = TestHost::start("krops-bench");
    std::fs::write(host.var_src().join(".populate"), "")?;
    let work = tempfile::tempdir()?;
    let store = krops_tests::secrets::PassStore::create(&work.path().join("store"));
    let recipient = std::fs::read_to_string(store.dir.join(".gpg-id"))?;
    for i in 0..count {
        let path = store.dir.join(format!("web/secret-{i:04}.gpg"));
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        let mut gpg = store.gpg();
        gpg.args(["--batch", "--yes", "--encrypt", "--recipient", recipient.trim(), "--output"]).arg(&path);
        let mut child = gpg.stdin(Stdio::piped()).spawn()?;
        use std::io::Write;
        child.stdin.take().context("stdin")?.write_all(format!("pass secret {i}").as_bytes())?;
        if !child.wait()?.success() {
            bail!("gpg --encrypt failed");
        }
    }
    let config = work.path().join("krops.toml");
    std::fs::write(
        &config,
        format!(
            "[deployments.bench]\ntarget = {}\n[deployments.bench.source.secrets.pass]\ndir = {:?}\nname = \"web\"\n",
            host.target_toml(Login::Root, host.port, "/var/src"),
            store.dir.display().to_string()
        ),
    )?;
    let files = walk(&store.dir.join("web"), "gpg")?;
    let gnupghome = store.gnupghome.path().to_owned();
    let baseline = || -> Result<()> {
        let plain = tempfile::tempdir()?;
        for (_, relative) in &files {
            let out = std::fs::File::create(plain.path().join(relative))?;
            let status = store.pass().args(["show", &format!("web/{relative}")]).stdout(out).status()?;
            if !status.success() {
                bail!("pass show failed");
            }
        }
        rsync_dir(&host, plain.path(), "secrets")
    };
    let env = [("GNUPGHOME", gnupghome.as_path()), ("PASSWORD_STORE_DIR", store.dir.as_path())];
    let times = compare(&build_dir.join("krops"), &config, &env, 3, baseline)?;
    report(
        &format!("{count} pass secrets to 1 host (loopback), median of 3"),
        "krops (gpg, 8 at once, into memory):",
        "baseline (pass show per secret, then rsync):",
        times,
    );
    Ok(())
}

/// Files below `dir` with `extension`, paired with their relative path without it.
fn walk(dir: &Path, extension: &str) -> Result<Vec<(std::path::PathBuf, String)>> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(current) = pending.pop() {
        for entry in std::fs::read_dir(&current)? {
            let path = entry?.path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|e| e == extension) {
                let relative = path.strip_prefix(dir)?.with_extension("").to_string_lossy().into_owned();
                found.push((path, relative));
            }
        }
    }
    Ok(found)
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn run_quiet(command: &mut Command) -> Result<()> {
    krops_tests::command::output(command, None).map(drop).map_err(anyhow::Error::msg)
}

/// A no-op redeploy (nothing changed) of three file sources, a symlink and a pipe to one host
/// with `one_way` latency each way.
fn noop_redeploy(build_dir: &Path, one_way: Duration) -> Result<()> {
    let host = TestHost::start("krops-bench");
    let proxy = DelayProxy::start(host.address(), one_way)?;
    std::fs::write(host.var_src().join(".populate"), "")?;
    let work = tempfile::tempdir()?;
    let conf = work.path().join("conf");
    std::fs::create_dir_all(conf.join("modules"))?;
    std::fs::write(conf.join("configuration.nix"), "{ ... }: { imports = [ ./modules ]; }\n")?;
    std::fs::write(conf.join("hardware.nix"), "{ ... }: { }\n")?;
    for i in 0..20 {
        std::fs::write(conf.join(format!("modules/m{i}.nix")), format!("{{ ... }}: {{ /* {i} */ }}\n"))?;
    }
    let config = work.path().join("krops.toml");
    std::fs::write(
        &config,
        format!(
            "[deployments.bench]\ntarget = {}\n[deployments.bench.source]\n\
             nixos-config.file = \"conf/configuration.nix\"\nhardware.file = \"conf/hardware.nix\"\n\
             modules.file = \"conf/modules\"\ncurrent.symlink = \"nixos-config\"\n\
             info.pipe = \"echo bench\"\n",
            host.target_toml(Login::Root, proxy.port, "/var/src")
        ),
    )?;
    let krops = build_dir.join("krops");
    let krops_run = || -> Result<Duration> {
        let started = Instant::now();
        run_quiet(Command::new(&krops).args(["-q", "-f"]).arg(&config).arg("populate"))?;
        Ok(started.elapsed())
    };
    krops_run()?; // the first deploy transfers everything; the measured ones change nothing
    let krops_times: Vec<Duration> = (0..ROUNDS).map(|_| krops_run()).collect::<Result<_>>()?;

    // The original: one fresh ssh connection for the sentinel check, for each rsync, for the
    // symlink and for the pipe.
    let ssh_options: Vec<String> = {
        let mut o = vec!["-l".to_owned(), "root".into(), "-p".into(), proxy.port.to_string()];
        o.extend(TestHost::extra_options());
        o
    };
    let ssh = |remote: &str| {
        let mut command = Command::new("ssh");
        command.args(&ssh_options).args(["-T", "127.0.0.1", remote]);
        command
    };
    let rsync_e = join(&ssh_options)?;
    let rsync = |source: String, name: &str| {
        let mut command = Command::new("rsync");
        command.args(["-e", &format!("ssh {rsync_e}"), "-vFrlptD", "--delete-excluded"]);
        command.arg(source).arg(format!("root@127.0.0.1:/var/src/{name}"));
        command
    };
    let conf_path = |p: &str| conf.join(p).display().to_string();
    let baseline_run = || -> Result<Duration> {
        let started = Instant::now();
        run_quiet(&mut ssh("test -e /var/src/.populate"))?;
        run_quiet(&mut rsync(conf_path("configuration.nix"), "nixos-config"))?;
        run_quiet(&mut rsync(conf_path("hardware.nix"), "hardware"))?;
        run_quiet(&mut rsync(format!("{}/", conf_path("modules")), "modules"))?;
        run_quiet(&mut ssh("rm -rf /var/src/current; ln -s nixos-config /var/src/current"))?;
        let pipe = format!("echo bench | ssh {} -T 127.0.0.1 'cat > /var/src/info'", join(&ssh_options)?);
        run_quiet(Command::new("sh").args(["-c", &pipe]))?;
        Ok(started.elapsed())
    };
    let baseline_times: Vec<Duration> = (0..ROUNDS).map(|_| baseline_run()).collect::<Result<_>>()?;

    // The floor: one cold `ssh true` to the same host through the same proxy.
    let ssh_true: Vec<Duration> = (0..ROUNDS)
        .map(|_| {
            let started = Instant::now();
            run_quiet(&mut ssh("true"))?;
            Ok(started.elapsed())
        })
        .collect::<Result<_>>()?;

    let (k, b, t) = (median(krops_times), median(baseline_times), median(ssh_true));
    println!(
        "no-op redeploy, 5 sources (3 file, symlink, pipe), 1 host, RTT {} ms, median of {ROUNDS}:",
        2 * one_way.as_millis()
    );
    println!("  krops (one multiplexed connection):       {:>7.0} ms", k.as_secs_f64() * 1000.0);
    println!("  baseline (one ssh connection per step):   {:>7.0} ms", b.as_secs_f64() * 1000.0);
    println!("  a lone cold `ssh true`:                   {:>7.0} ms", t.as_secs_f64() * 1000.0);
    println!("  ratio baseline / krops:                   {:>7.2}x", b.as_secs_f64() / k.as_secs_f64());
    println!("  ratio krops / ssh true:                   {:>7.2}x", k.as_secs_f64() / t.as_secs_f64());
    Ok(())
}

/// Options quoted for a shell command line (ssh's `-e` for rsync, a pipeline).
fn join(words: &[String]) -> Result<String> {
    Ok(shlex::try_join(words.iter().map(String::as_str))?)
}
