//! The git populator against real repositories, locally and on real sshd hosts (root, sudo).

use krops_tests::git::{git, Daemon, Repo};

use crate::support::{Kind, Sandbox, Site};

crate::on_every_site!(
    commit_branch_and_tag_refs,
    branch_is_re_resolved_after_it_moves,
    switching_refs_back_and_forth,
    shallow_fetches_history_of_depth_one,
    fetch_always_fetches_even_when_the_commit_is_there,
    clean_spares_excluded_paths,
    submodules_and_git_daemon_urls,
    a_plain_directory_is_replaced,
    a_modified_work_tree_is_reset_and_a_clean_one_left_alone,
    unknown_ref_fails_before_the_target_is_touched,
    hostile_url_or_ref_executes_nothing,
);

fn config(sb: &Sandbox, site: &Site, git_attrs: &str) {
    sb.write(
        "krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source.repo.git]\n{git_attrs}\n",
            site.target()
        ),
    );
}

fn deployed_head(site: &Site) -> String {
    git(&site.path("repo"), &["rev-parse", "HEAD"])
}

fn commit_branch_and_tag_refs(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    let first = repo.commit("a.nix", "1");
    git(&repo.dir, &["tag", "-a", "v1", "-m", "release 1"]);
    let second = repo.commit("a.nix", "2");
    git(&repo.dir, &["branch", "stable", &first]);

    config(&sb, &site, &format!("url = {:?}\nref = {first:?}", repo.url()));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), first);
    assert_eq!(site.read("repo/a.nix"), "1");

    config(&sb, &site, &format!("url = {:?}\nref = \"main\"", repo.url()));
    // Plugins log through the host: shown with -v.
    sb.krops(&["-v", "populate"])
        .success()
        .stderr_has(&format!("commit: {second}"))
        .stderr_has(&format!("repo: checking out {second}"));
    // Unchanged since: skipped.
    sb.krops(&["-v", "populate"]).success().stderr_has("repo (git) in 0 ms, unchanged: true");
    assert_eq!(deployed_head(&site), second);

    config(&sb, &site, &format!("url = {:?}\nref = \"v1\"", repo.url()));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), first, "an annotated tag deploys the commit it tags");

    config(&sb, &site, &format!("url = {:?}\nref = \"refs/heads/stable\"", repo.url()));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), first);
}

fn branch_is_re_resolved_after_it_moves(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    repo.commit("a.nix", "1");
    config(&sb, &site, &format!("url = {:?}\nref = \"main\"", repo.url()));
    sb.krops(&["populate"]).success();
    let moved = repo.commit("a.nix", "2");
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), moved);
    assert_eq!(site.read("repo/a.nix"), "2");
}

fn switching_refs_back_and_forth(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    let one = repo.commit("a.nix", "1");
    let two = repo.commit("b.nix", "2");
    for (commit, has_b) in [(&one, false), (&two, true), (&one, false), (&two, true)] {
        config(&sb, &site, &format!("url = {:?}\nref = {commit:?}", repo.url()));
        sb.krops(&["populate"]).success();
        assert_eq!(&deployed_head(&site), commit);
        assert_eq!(site.path("repo/b.nix").exists(), has_b);
    }
}

fn shallow_fetches_history_of_depth_one(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    repo.commit("a.nix", "1");
    repo.commit("a.nix", "2");
    let head = repo.commit("a.nix", "3");
    config(&sb, &site, &format!("url = {:?}\nref = \"main\"\nshallow = true", repo.url()));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), head);
    assert_eq!(git(&site.path("repo"), &["rev-list", "--count", "HEAD"]), "1");
    assert!(site.path("repo/.git/shallow").exists());
}

fn fetch_always_fetches_even_when_the_commit_is_there(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    let head = repo.commit("a.nix", "1");
    let fetch_head = site.path("repo/.git/FETCH_HEAD");
    config(&sb, &site, &format!("url = {:?}\nref = {head:?}", repo.url()));
    sb.krops(&["populate"]).success();
    assert!(!fetch_head.exists(), "a clone that has the commit fetches nothing");
    sb.krops(&["populate"]).success();
    assert!(!fetch_head.exists(), "the commit is there: no fetch");
    config(&sb, &site, &format!("url = {:?}\nref = {head:?}\nfetchAlways = true", repo.url()));
    sb.krops(&["populate"]).success();
    assert!(fetch_head.exists(), "fetchAlways fetched although the commit was there");
}

fn clean_spares_excluded_paths(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    repo.commit(".gitignore", "ignored.out\n");
    config(
        &sb,
        &site,
        &format!("url = {:?}\nref = \"main\"\nclean.exclude = [\"/.version-suffix\"]", repo.url()),
    );
    sb.krops(&["populate"]).success();
    site.write("repo/.version-suffix", "pre-1");
    site.write("repo/junk", "x");
    site.write("repo/ignored.out", "x");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("repo/.version-suffix"), "pre-1");
    assert!(!site.path("repo/junk").exists());
    assert!(!site.path("repo/ignored.out").exists(), "git clean -x removes ignored files too");
}

fn submodules_and_git_daemon_urls(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let served = sb.mkdir("served");
    let daemon = Daemon::start(&served);
    let lib = Repo::init(served.join("lib"));
    lib.commit("lib.nix", "library");
    let main = Repo::init(served.join("main"));
    main.commit("default.nix", "main");
    git(&main.dir, &["submodule", "add", "-q", &daemon.url("lib"), "vendor/lib"]);
    git(&main.dir, &["commit", "-q", "-m", "add submodule"]);
    config(&sb, &site, &format!("url = {:?}\nref = \"main\"", daemon.url("main")));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), main.head());
    assert_eq!(site.read("repo/vendor/lib/lib.nix"), "library");
}

fn a_plain_directory_is_replaced(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    site.write("repo/old/file", "not a work tree");
    let repo = Repo::init(sb.path("origin"));
    let head = repo.commit("a.nix", "1");
    config(&sb, &site, &format!("url = {:?}\nref = \"main\"", repo.url()));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), head);
    assert!(!site.path("repo/old").exists());
}

fn unknown_ref_fails_before_the_target_is_touched(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::new(&sb, kind); // not even a sentinel: the sentinel stage must not run
    let repo = Repo::init(sb.path("origin"));
    repo.commit("a.nix", "1");
    config(&sb, &site, &format!("url = {:?}\nref = \"no-such-branch\"\nshallow = true", repo.url()));
    sb.krops(&["populate"])
        .code(1)
        .stderr_has("prepare of source \"repo\" failed")
        .stderr_has("ref \"no-such-branch\" does not exist");
    assert!(site.listing("").is_empty());
}

fn hostile_url_or_ref_executes_nothing(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let marker = sb.path("pwned");
    let m = marker.display();
    for attrs in [
        format!("url = \"--upload-pack=touch {m}\"\nref = \"main\""),
        format!("url = \"file:///x\"\nref = \"--upload-pack=touch {m}\""),
    ] {
        config(&sb, &site, &attrs);
        sb.krops(&["populate"]).code(2).stderr_has("would be read as an option");
    }
    for attrs in [
        format!("url = \"file:///nonexistent;touch {m}\"\nref = \"main\""),
        format!("url = \"file:///nonexistent$(touch {m})\"\nref = \"main\""),
        format!("url = \"ext::sh -c touch% {m}\"\nref = \"main\""),
    ] {
        config(&sb, &site, &attrs);
        sb.krops(&["populate"]).code(1);
    }
    assert!(!marker.exists(), "a url or ref was executed");
    assert_eq!(site.listing(""), [".populate"]);
}

fn a_modified_work_tree_is_reset_and_a_clean_one_left_alone(kind: Kind) {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, kind);
    let repo = Repo::init(sb.path("origin"));
    repo.commit("a.nix", "original");
    config(&sb, &site, &format!("url = {:?}\nref = \"main\"", repo.url()));
    sb.krops(&["populate"]).success();
    let index = std::fs::read(site.path("repo/.git/index")).unwrap();
    let reflog = std::fs::read(site.path("repo/.git/logs/HEAD")).unwrap();
    sb.krops(&["populate"]).success();
    assert_eq!(std::fs::read(site.path("repo/.git/index")).unwrap(), index, "a redeploy rewrote the index");
    assert_eq!(std::fs::read(site.path("repo/.git/logs/HEAD")).unwrap(), reflog, "a redeploy reset again");

    site.write("repo/a.nix", "edited on the target");
    sb.krops(&["populate"]).success();
    assert_eq!(site.read("repo/a.nix"), "original");
}

/// An ssh URL: krops resolves the ref over ssh (GIT_SSH_COMMAND carries the test key), and the
/// target fetches over ssh with its own key, as a real target would from its git host. Here
/// the git host is the target itself.
#[test]
fn ssh_urls() {
    for kind in [Kind::Root, Kind::Sudo] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, kind);
        let host = site.host().unwrap();
        let repo = Repo::init(sb.path("origin"));
        let head = repo.commit("a.nix", "over ssh");
        let options = krops_tests::hosts::TestHost::extra_options();
        let key = options.iter().position(|o| o == "-i").map(|i| options[i + 1].clone()).unwrap();
        // The target's root logs in to the git host (itself) with the test key.
        let ssh_dir = host.root_dir().join("root-home/.ssh");
        std::fs::copy(&key, ssh_dir.join("id_ed25519")).unwrap();
        std::fs::write(
            ssh_dir.join("config"),
            "StrictHostKeyChecking no\nUserKnownHostsFile /dev/null\nLogLevel ERROR\n",
        )
        .unwrap();
        let url = format!("ssh://root@127.0.0.1:{}{}", host.port, repo.dir.display());
        config(&sb, &site, &format!("url = {url:?}\nref = \"main\""));
        let mut command = sb.krops_command(&["populate"]);
        command.env("GIT_SSH_COMMAND", format!("ssh {}", options.join(" ")));
        crate::support::Outcome::of(command).success().stderr_has(&format!("commit: {head}"));
        assert_eq!(deployed_head(&site), head, "{kind:?}");
    }
}

/// git's smart HTTP protocol (what https URLs speak, less the TLS): krops resolves the branch
/// over HTTP with gix, the target fetches over HTTP with its git.
#[test]
fn http_urls() {
    for kind in [Kind::Local, Kind::Root] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, kind);
        let served = sb.mkdir("served");
        let server = krops_tests::git::HttpServer::start(&served);
        let repo = Repo::init(served.join("repo"));
        let head = repo.commit("a.nix", "over http");
        config(&sb, &site, &format!("url = {:?}\nref = \"main\"", server.url("repo")));
        sb.krops(&["populate"]).success().stderr_has(&format!("commit: {head}"));
        assert_eq!(deployed_head(&site), head, "{kind:?}");
    }
}

/// `origin/BRANCH` (what `fetchAlways` users write) is that branch; an abbreviated commit is
/// resolved to the full one (from a local repository: any commit; from a remote: a tip).
#[test]
fn origin_branch_and_abbreviated_commits() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let repo = Repo::init(sb.path("origin"));
    let first = repo.commit("a.nix", "1");
    let second = repo.commit("a.nix", "2");
    config(&sb, &site, &format!("url = {:?}\nref = \"origin/main\"\nfetchAlways = true", repo.url()));
    sb.krops(&["populate"]).success().stderr_has(&format!("commit: {second}"));
    assert_eq!(deployed_head(&site), second);
    config(&sb, &site, &format!("url = {:?}\nref = {:?}", repo.url(), &first[..7]));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), first, "a short commit of a local repository");
    config(&sb, &site, &format!("url = {:?}\nref = \"0000000\"", repo.url()));
    sb.krops(&["populate"]).code(1).stderr_has("commit \"0000000\" does not exist at");
    // Over git://, an abbreviation of a branch tip.
    let daemon = krops_tests::git::Daemon::start(&sb.path(""));
    config(&sb, &site, &format!("url = {:?}\nref = {:?}", daemon.url("origin"), &second[..10]));
    sb.krops(&["populate"]).success();
    assert_eq!(deployed_head(&site), second, "a short commit of a remote tip");
}

/// A repository only the target can reach (here: below the test host's private /root) is
/// resolved on the target, before anything is written there.
#[test]
fn a_url_only_the_target_reaches() {
    for kind in [Kind::Root, Kind::Sudo] {
        let sb = Sandbox::new();
        let site = Site::ready(&sb, kind);
        let inside = site.host().unwrap().root_dir().join("root-home/private-repo");
        let repo = Repo::init(inside);
        let head = repo.commit("a.nix", "only the target sees me");
        git(&repo.dir, &["tag", "-a", "v9", "-m", "tagged"]);
        assert!(
            !std::path::Path::new("/root/private-repo").exists(),
            "the deploying machine must not see it"
        );
        for git_ref in ["main", "v9"] {
            config(&sb, &site, &format!("url = \"file:///root/private-repo\"\nref = {git_ref:?}"));
            sb.krops(&["populate"]).success().stderr_has(&format!("commit: {head}"));
            assert_eq!(deployed_head(&site), head, "{kind:?} {git_ref}");
        }
        config(&sb, &site, "url = \"file:///root/private-repo\"\nref = \"nope\"");
        let before = site.listing("");
        sb.krops(&["populate"])
            .code(1)
            .stderr_has("ref \"nope\" does not exist at file:///root/private-repo (asked on the target)");
        assert_eq!(site.listing(""), before);
    }
}

/// A relative path as `url` is relative to the configuration's file, like every path there.
#[test]
fn a_relative_url_is_relative_to_the_configuration() {
    let sb = Sandbox::new();
    let site = Site::ready(&sb, Kind::Local);
    let repo = Repo::init(sb.path("repos/origin"));
    let head = repo.commit("a.nix", "1");
    sb.write(
        "conf/krops.toml",
        &format!(
            "[deployments.site]\ntarget = {}\n[deployments.site.source.repo.git]\nurl = \"../repos/origin\"\nref = \"main\"\n",
            site.target()
        ),
    );
    sb.krops(&["-f", "conf/krops.toml", "populate"]).success();
    assert_eq!(deployed_head(&site), head);
}
