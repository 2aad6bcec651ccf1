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
    noop_redeploy(build_dir, Duration::from_millis(25))
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn run_quiet(command: &mut Command) -> Result<()> {
    let output = command.stdin(Stdio::null()).output().context("cannot start benchmark command")?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
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
    let rsync_e = ssh_options.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(" ");
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
        let pipe = format!(
            "echo bench | ssh {} -T 127.0.0.1 'cat > /var/src/info'",
            ssh_options.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(" ")
        );
        run_quiet(Command::new("sh").args(["-c", &pipe]))?;
        Ok(started.elapsed())
    };
    let baseline_times: Vec<Duration> = (0..ROUNDS).map(|_| baseline_run()).collect::<Result<_>>()?;

    let (k, b) = (median(krops_times), median(baseline_times));
    println!(
        "no-op redeploy, 5 sources (3 file, symlink, pipe), 1 host, RTT {} ms, median of {ROUNDS}:",
        2 * one_way.as_millis()
    );
    println!("  krops (one multiplexed connection):       {:>7.0} ms", k.as_secs_f64() * 1000.0);
    println!("  baseline (one ssh connection per step):   {:>7.0} ms", b.as_secs_f64() * 1000.0);
    println!("  ratio baseline / krops:                   {:>7.2}x", b.as_secs_f64() / k.as_secs_f64());
    Ok(())
}
