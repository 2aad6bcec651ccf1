//! `cargo xtask test-vm`: a real virtual machine as the deploy target. Builds a Debian-based
//! image from packages (no debootstrap), caches it under `target/test-vm/<hash of inputs>`,
//! boots it under QEMU, deploys every source type into it with the real krops, checks the
//! result inside, deploys again (which must change nothing), and powers it off.

use std::hash::{Hash, Hasher};
use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use krops_tests::git::{git, Daemon, Repo};
use krops_tests::secrets::{PassStore, PassageStore};

/// What goes into the image; the kernel package brings NVMe and ext4 built in.
const PACKAGES: &[&str] = &[
    "busybox-static",
    "bash",
    "dash",
    "coreutils",
    "findutils",
    "grep",
    "sed",
    "gawk",
    "tar",
    "gzip",
    "diffutils",
    "util-linux",
    "mount",
    "procps",
    "openssh-server",
    "rsync",
    "git",
    "nix-bin",
    "linux-image-cloud-amd64",
];
const RCS: &str = include_str!("../vm/rcS");
const INITTAB: &str = include_str!("../vm/inittab");
const SSHD_CONFIG: &str = include_str!("../vm/sshd_config");
const NIXOS_REBUILD: &str = include_str!("../../tests/fixtures/nix/bin/nixos-rebuild");
const NIX_CONF: &str = "build-users-group =\nsandbox = false\nsubstituters =\n";
const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\nsshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n";
const SHADOW: &str = "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\n";
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
const IMAGE_SIZE: &str = "2G";

/// How `test-vm` should end: deploy properly, or with a deliberately missing sentinel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Deploy,
    MissingSentinel,
}

pub fn run(workspace: &Path, krops: &Path, mode: Mode) -> Result<()> {
    let started = Instant::now();
    let image = Image::ensure(&workspace.join("target/test-vm"))?;
    let image_time = started.elapsed();
    let boot_started = Instant::now();
    let mut vm = Vm::boot(&image)?;
    let outcome = (|| -> Result<Timings> {
        vm.wait_for_ssh(Duration::from_secs(180))?;
        let boot = boot_started.elapsed();
        let mut timings = deploy_and_check(workspace, krops, &image, &vm, mode)?;
        timings.boot = boot;
        let off = Instant::now();
        vm.ssh(&image, "busybox poweroff")?;
        vm.wait_for_exit(Duration::from_secs(60))?;
        timings.poweroff = off.elapsed();
        Ok(timings)
    })();
    match outcome {
        Ok(t) => {
            println!("test-vm timings ({:.1} s in all):", started.elapsed().as_secs_f64());
            println!(
                "  image      {:>6.1} s ({})",
                image_time.as_secs_f64(),
                if image.built { "built" } else { "cached" }
            );
            println!("  boot       {:>6.1} s (until ssh answers)", t.boot.as_secs_f64());
            println!("  deploy     {:>6.1} s (every source type, backup, switch)", t.first.as_secs_f64());
            println!("  redeploy   {:>6.1} s (changed nothing)", t.second.as_secs_f64());
            println!("  poweroff   {:>6.1} s", t.poweroff.as_secs_f64());
            println!("test-vm: 1 passed, 0 failed");
            Ok(())
        }
        Err(error) => {
            vm.kill();
            bail!(
                "test-vm failed: {error:#}\n--- last lines of the serial console ({}):\n{}",
                image.dir.join("serial.log").display(),
                vm.serial_tail(30)
            )
        }
    }
}

/// Runs the VM test in a mode that must fail, and checks that it fails for `reason`.
pub fn expect_failure(workspace: &Path, krops: &Path, mode: Mode, reason: &str) -> Result<()> {
    match run(workspace, krops, mode) {
        Ok(()) => bail!("test-vm in a broken mode passed; it must fail with {reason:?}"),
        Err(error) if format!("{error:#}").contains(reason) => {
            println!("test-vm (broken on purpose): failed as it must, with {reason:?}");
            println!("test-vm-broken: 1 passed, 0 failed");
            Ok(())
        }
        Err(error) => bail!("test-vm in a broken mode failed, but not with {reason:?}: {error:#}"),
    }
}

#[derive(Default)]
struct Timings {
    boot: Duration,
    first: Duration,
    second: Duration,
    poweroff: Duration,
}

/// A built image: the disk, the kernel, and the key root logs in with.
struct Image {
    dir: PathBuf,
    built: bool,
}

impl Image {
    fn disk(&self) -> PathBuf {
        self.dir.join("root.img")
    }
    fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    fn key(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// Reuses `cache/<hash>` when it exists, else builds it there (atomically).
    fn ensure(cache: &Path) -> Result<Image> {
        let mut hasher = std::hash::DefaultHasher::new();
        (PACKAGES, RCS, INITTAB, SSHD_CONFIG, NIXOS_REBUILD, NIX_CONF, PASSWD, SHADOW, GROUP, IMAGE_SIZE)
            .hash(&mut hasher);
        let dir = cache.join(format!("{:016x}", hasher.finish()));
        if dir.join("root.img").is_file() {
            return Ok(Image { dir, built: false });
        }
        std::fs::create_dir_all(cache)?;
        let work = tempfile::Builder::new().prefix("building-").tempdir_in(cache)?;
        build(work.path())?;
        let work = work.keep();
        std::fs::rename(&work, &dir)
            .with_context(|| format!("cannot move the image to {}", dir.display()))?;
        Ok(Image { dir, built: true })
    }
}

fn run_checked(command: &mut Command) -> Result<String> {
    krops_tests::command::output(command, None).map_err(anyhow::Error::msg)
}

/// Downloads the packages against an empty dpkg status (so apt resolves every dependency),
/// unpacks them without maintainer scripts, writes the little configuration a boot needs,
/// and makes an ext4 image of it.
fn build(work: &Path) -> Result<()> {
    let debs = work.join("debs");
    let root = work.join("root");
    std::fs::create_dir_all(&debs)?;
    std::fs::create_dir_all(&root)?;
    let status = work.join("empty-status");
    std::fs::write(&status, "")?;
    let download = || {
        run_checked(
            Command::new("apt-get")
                .arg("-o")
                .arg(format!("Dir::State::status={}", status.display()))
                .arg("-o")
                .arg(format!("Dir::Cache::archives={}", debs.display()))
                .args(["-o", "Debug::NoLocking=1", "-o", "APT::Install-Recommends=false"])
                .args(["--download-only", "-y", "-qq", "install"])
                .args(PACKAGES),
        )
    };
    if download().is_err() {
        // A fresh machine may have no package lists yet.
        run_checked(Command::new("apt-get").args(["update", "-qq"]))?;
        download()?;
    }
    for entry in std::fs::read_dir(&debs)? {
        let deb = entry?.path();
        if deb.extension().is_some_and(|e| e == "deb") {
            run_checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        }
    }
    let kernel = std::fs::read_dir(root.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("the kernel package brought no vmlinuz")?;
    std::fs::copy(&kernel, work.join("vmlinuz"))?;

    let write = |relative: &str, contents: &str, mode: u32| -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(relative);
        std::fs::create_dir_all(path.parent().context("parent")?)?;
        std::fs::write(&path, contents)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        Ok(())
    };
    write("etc/init.d/rcS", RCS, 0o755)?;
    write("etc/inittab", INITTAB, 0o644)?;
    write("etc/ssh/sshd_config", SSHD_CONFIG, 0o644)?;
    write("etc/nix/nix.conf", NIX_CONF, 0o644)?;
    write("etc/passwd", PASSWD, 0o644)?;
    write("etc/shadow", SHADOW, 0o640)?;
    write("etc/group", GROUP, 0o644)?;
    write("etc/hosts", "127.0.0.1 localhost krops-vm\n", 0o644)?;
    write("usr/local/sbin/nixos-rebuild", NIXOS_REBUILD, 0o755)?;
    let _ = std::fs::remove_file(root.join("sbin/init"));
    std::os::unix::fs::symlink("/bin/busybox", root.join("sbin/init"))?;

    let key = work.join("id_ed25519");
    run_checked(
        Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "krops-test-vm", "-f"])
            .arg(&key),
    )?;
    let host_key = root.join("etc/ssh/ssh_host_ed25519_key");
    run_checked(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&host_key))?;
    write("root/.ssh/authorized_keys", &std::fs::read_to_string(key.with_extension("pub"))?, 0o600)?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(root.join("root/.ssh"), std::fs::Permissions::from_mode(0o700))?;
    }
    run_checked(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", "root", "-d"])
            .arg(&root)
            .arg(work.join("root.img"))
            .arg(IMAGE_SIZE),
    )?;
    std::fs::remove_dir_all(&root)?;
    std::fs::remove_dir_all(&debs)?;
    Ok(())
}

/// A booted QEMU, killed on drop.
struct Vm {
    qemu: Option<Child>,
    port: u16,
    serial: PathBuf,
}

impl Vm {
    fn boot(image: &Image) -> Result<Vm> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let serial = image.dir.join("serial.log");
        // KVM only where it is real hardware virtualisation; a paravirtual /dev/kvm "starts"
        // and then crawls or aborts.
        let kvm = Path::new("/dev/kvm").exists()
            && (Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists());
        let accel: &[&str] = if kvm {
            &["-accel", "kvm", "-cpu", "host"]
        } else {
            &["-accel", "tcg,thread=multi", "-cpu", "max"]
        };
        let qemu = Command::new("qemu-system-x86_64")
            .args(["-machine", "q35"])
            .args(accel)
            .args(["-smp", "2", "-m", "1024", "-nodefaults", "-display", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .arg("-kernel")
            .arg(image.kernel())
            .args(["-append", "console=ttyS0 root=/dev/nvme0n1 rw init=/sbin/init panic=-1"])
            .arg("-drive")
            .arg(format!("file={},if=none,id=root,format=raw", image.disk().display()))
            .args(["-device", "nvme,drive=root,serial=root", "-snapshot"])
            .args(["-netdev", &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22")])
            .args(["-device", "virtio-net-pci,netdev=n0", "-no-reboot"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start qemu-system-x86_64")?;
        Ok(Vm { qemu: Some(qemu), port, serial })
    }

    /// User-mode networking accepts connections before the guest listens: ready means the
    /// socket *reads* an SSH banner.
    fn wait_for_ssh(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(qemu) = self.qemu.as_mut() {
                if let Some(status) = qemu.try_wait()? {
                    bail!("QEMU exited during boot ({status})");
                }
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut banner = [0u8; 4];
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("ssh did not answer within {} s", limit.as_secs())
    }

    fn ssh_options(image: &Image) -> Vec<String> {
        let key = image.key().display().to_string();
        ["-F", "/dev/null", "-i", &key, "-o", "IdentitiesOnly=yes", "-o", "UserKnownHostsFile=/dev/null"]
            .into_iter()
            .chain(["-o", "StrictHostKeyChecking=no", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=30"])
            .map(str::to_owned)
            .collect()
    }

    fn ssh(&self, image: &Image, command: &str) -> Result<String> {
        run_checked(Command::new("ssh").args(Vm::ssh_options(image)).args([
            "-p",
            &self.port.to_string(),
            "-T",
            "root@127.0.0.1",
            command,
        ]))
    }

    fn wait_for_exit(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(qemu) = self.qemu.as_mut() {
                if qemu.try_wait()?.is_some() {
                    self.qemu = None;
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("the VM did not power off within {} s", limit.as_secs())
    }

    fn kill(&mut self) {
        if let Some(mut qemu) = self.qemu.take() {
            let _ = qemu.kill();
            let _ = qemu.wait();
        }
    }

    fn serial_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.serial).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs krops, failing with its stderr; gives up after `limit`.
fn krops(
    krops: &Path,
    dir: &Path,
    env: &[(&str, PathBuf)],
    args: &[&str],
    limit: Duration,
) -> Result<String> {
    let mut child = Command::new(krops)
        .args(args)
        .current_dir(dir)
        .envs(env.iter().map(|(k, v)| (*k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let deadline = Instant::now() + limit;
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("krops {} did not finish within {} s", args.join(" "), limit.as_secs());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if !output.status.success() {
        bail!("krops {} failed ({}):\n{stderr}", args.join(" "), output.status);
    }
    Ok(stderr)
}

fn deploy_and_check(
    workspace: &Path,
    krops_bin: &Path,
    image: &Image,
    vm: &Vm,
    mode: Mode,
) -> Result<Timings> {
    let work = tempfile::tempdir()?;
    let served = work.path().join("served");
    std::fs::create_dir_all(&served)?;
    let daemon = Daemon::start(&served);
    let repo = Repo::init(served.join("repo"));
    repo.commit("README", "deployed by cargo xtask test-vm\n");
    let commit = repo.commit("default.nix", "{ }\n");
    git(&repo.dir, &["tag", "-a", "v1", "-m", "v1"]);
    let passage = PassageStore::create(&work.path().join("passage"), true);
    passage.insert("vm/root-password", b"age secret");
    passage.insert_for("wifi", b"ssh secret", 1);
    let pass = PassStore::create(&work.path().join("pass"));
    pass.insert("vm/api-token", "gpg secret", 1_600_000_000);
    std::fs::write(work.path().join("configuration.nix"), "{ ... }: { krops-test.marker = \"vm\"; }\n")?;
    let options = krops_tests::hosts::quoted(&Vm::ssh_options(image));
    let force = mode == Mode::Deploy;
    let config = format!(
        r#"[deployments.vm]
target = {{ host = "127.0.0.1", port = {port}, user = "root", path = "/var/src", extraOptions = [{options}] }}
force = {force}
backup = true
useNixOutputMonitor = false

[deployments.vm.source]
nixpkgs.file = {nixpkgs:?}
nixos-config.file = "configuration.nix"
repo.git = {{ url = "git://10.0.2.2:{git_port}/repo", ref = "{commit}" }}
secrets.passage = {{ dir = {passage_dir:?}, identities_file = {identities:?} }}
pass.pass = {{ dir = {pass_dir:?}, name = "vm" }}
hello.derivation = 'derivation {{ name = "hello"; system = builtins.currentSystem; builder = "/bin/sh"; args = ["-c" "echo hello from the vm store > $out"]; }}'
info.pipe = "echo deployed by test-vm"
current.symlink = "nixos-config"
"#,
        port = vm.port,
        options = options.join(", "),
        nixpkgs = workspace.join("tests/fixtures/nix/nixpkgs").display().to_string(),
        git_port = daemon.port,
        passage_dir = passage.store.display().to_string(),
        identities = passage.identities.display().to_string(),
        pass_dir = pass.dir.display().to_string(),
    );
    std::fs::write(work.path().join("krops.toml"), config)?;
    let env = pass.env();
    let started = Instant::now();
    krops(krops_bin, work.path(), &env, &["deploy"], Duration::from_secs(300))?;
    let first = started.elapsed();

    let facts = vm.ssh(
        image,
        r#"set -e
cd /var/src
echo "info=$(cat info)"
echo "current=$(readlink current)"
echo "commit=$(git -C repo rev-parse HEAD)"
echo "readme=$(cat repo/README)"
echo "hello=$(cat hello)"
echo "passage=$(cat secrets/vm/root-password) $(cat secrets/wifi)"
echo "pass=$(cat pass/api-token)"
echo "modes=$(stat -c '%a' secrets secrets/vm secrets/vm/root-password secrets/wifi pass pass/api-token | tr '\n' ' ')"
echo "activations=$(wc -l < /var/lib/krops-test/activations) $(cut -d' ' -f1 /var/lib/krops-test/activations | tail -1)"
echo "system=$(tail -1 /var/lib/krops-test/activations | cut -d' ' -f2)"
echo "backup=$(test -d .populate/backup && echo yes)""#,
    )?;
    let fact = |key: &str| -> String {
        facts.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).unwrap_or_default().to_owned()
    };
    let expect = |key: &str, expected: &str| -> Result<()> {
        if fact(key) != expected {
            bail!("in the VM, {key} is {:?}, expected {expected:?}\nall facts:\n{facts}", fact(key));
        }
        Ok(())
    };
    expect("info", "deployed by test-vm")?;
    expect("current", "nixos-config")?;
    expect("commit", &commit)?;
    expect("readme", "deployed by cargo xtask test-vm")?;
    expect("hello", "hello from the vm store")?;
    expect("passage", "age secret ssh secret")?;
    expect("pass", "gpg secret")?;
    expect("modes", "700 700 600 600 700 600 ")?;
    expect("activations", "1 switch")?;
    expect("backup", "yes")?;
    if !fact("system").ends_with("-nixos-system-vm") {
        bail!("the VM switched to {:?}, not the system built from the deployed sources", fact("system"));
    }

    // Everything but krops's own bookkeeping: the sentinel and the lock (which names its
    // last holder and when).
    let snapshot_script = r#"cd /var/src && find . \( -path ./.populate -o -path './.krops*' \) -prune -o -printf '%p %m %y %l\n' | sort && find . \( -path ./.populate -o -path './.krops*' \) -prune -o -type f -print0 | sort -z | xargs -0 sha256sum"#;
    let before = vm.ssh(image, snapshot_script)?;
    let started = Instant::now();
    krops(krops_bin, work.path(), &env, &["deploy"], Duration::from_secs(300))?;
    let second = started.elapsed();
    let after = vm.ssh(image, snapshot_script)?;
    if before != after {
        bail!("the second deploy changed /var/src:\n--- before\n{before}\n--- after\n{after}");
    }
    let activations = vm.ssh(image, "cut -d' ' -f2 /var/lib/krops-test/activations | sort -u | wc -l")?;
    if activations.trim() != "1" {
        bail!("the second deploy switched to another system");
    }
    Ok(Timings { first, second, ..Timings::default() })
}
