//! The Docker engine and the Compose tool, driven through their command lines.
//!
//! [`Project`] is one compose project (docker-compose.yml under a project name of its own) and
//! everything the container test adds to it (client containers, a network). Dropping it tears
//! all of that down, `down -v` included, also when the test fails; it never touches anything
//! outside its own project.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::paths::workspace_root;

fn describe(program: &str, args: &[&str]) -> String {
    format!("{program} {}", args.join(" "))
}

fn finish(what: String, output: std::io::Result<Output>) -> Result<String, String> {
    let output = output.map_err(|e| format!("cannot run `{what}`: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        Err(format!(
            "`{what}` failed ({}): {}{}",
            output.status,
            stderr.trim(),
            if stderr.trim().is_empty() {
                stdout.trim().to_owned()
            } else {
                String::new()
            }
        ))
    }
}

/// `docker ARGS`, its standard output, or the command and its error output.
pub fn docker(args: &[&str]) -> Result<String, String> {
    finish(
        describe("docker", args),
        Command::new("docker").args(args).output(),
    )
}

/// `docker ARGS` with its output shown (long builds), in `dir`.
pub fn docker_shown(args: &[&str], dir: &Path) -> Result<(), String> {
    let status = Command::new("docker")
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed ({status})", describe("docker", args)))
    }
}

/// Fails loudly when there is no Docker engine to talk to.
pub fn require_engine() -> Result<(), String> {
    docker(&["version", "--format", "{{.Server.Version}}"])
        .map(|_| ())
        .map_err(|e| {
            format!("the container test needs a running Docker engine and the docker CLI: {e}")
        })
}

/// Whether a local image of this name exists and carries `label=value`.
pub fn image_has_label(image: &str, label: &str, value: &str) -> bool {
    docker(&[
        "image",
        "inspect",
        "--format",
        &format!("{{{{index .Config.Labels \"{label}\"}}}}"),
        image,
    ])
    .is_ok_and(|found| found.trim() == value)
}

/// The Compose tool: the `docker compose` plugin, or the standalone `docker-compose`.
#[derive(Debug, Clone)]
pub struct ComposeTool {
    program: String,
    prefix: Vec<String>,
}

impl ComposeTool {
    pub fn detect() -> Result<ComposeTool, String> {
        let works = |program: &str, args: &[&str]| {
            Command::new(program)
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if works("docker", &["compose", "version"]) {
            Ok(ComposeTool {
                program: "docker".to_owned(),
                prefix: vec!["compose".to_owned()],
            })
        } else if works("docker-compose", &["version"]) {
            Ok(ComposeTool {
                program: "docker-compose".to_owned(),
                prefix: Vec::new(),
            })
        } else {
            Err(
                "the container test needs Docker Compose: neither `docker compose` nor \
                 `docker-compose` works (Debian: apt-get install docker-compose)"
                    .to_owned(),
            )
        }
    }
}

/// One compose project of docker-compose.yml, torn down on drop.
#[derive(Debug)]
pub struct Project {
    tool: ComposeTool,
    pub name: String,
    /// The compose variables (image names, published ports) given to every compose command.
    env: Vec<(String, String)>,
    /// Containers the test started itself, removed on drop.
    containers: Vec<String>,
    /// Networks the test made itself, removed on drop.
    networks: Vec<String>,
}

impl Project {
    pub fn new(tool: ComposeTool, name: &str, env: Vec<(String, String)>) -> Project {
        Project {
            tool,
            name: name.to_owned(),
            env,
            containers: Vec::new(),
            networks: Vec::new(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(&self.tool.program);
        command
            .args(&self.tool.prefix)
            .args(["-f", "docker-compose.yml", "-p", &self.name])
            .args(args)
            .current_dir(workspace_root())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        command
    }

    /// A compose command, output captured.
    pub fn compose(&self, args: &[&str]) -> Result<String, String> {
        let what = format!("compose -p {} {}", self.name, args.join(" "));
        finish(what, self.command(args).output())
    }

    /// A compose command with its output shown (builds).
    pub fn compose_shown(&self, args: &[&str]) -> Result<(), String> {
        let status = self
            .command(args)
            .status()
            .map_err(|e| format!("cannot run compose: {e}"))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "`compose -p {} {}` failed ({status})",
                self.name,
                args.join(" ")
            ))
        }
    }

    /// The id of the (one) container of a service.
    pub fn container(&self, service: &str) -> Result<String, String> {
        let ids = self.compose(&["ps", "-q", service])?;
        ids.lines()
            .map(str::trim)
            .find(|id| !id.is_empty())
            .map(str::to_owned)
            .ok_or_else(|| format!("service {service} has no container"))
    }

    /// The name of one of the project's networks, as the engine knows it.
    pub fn network(&self, network: &str) -> String {
        // Both Compose generations name networks `<project>_<network>`.
        format!("{}_{network}", self.name)
    }

    /// Records a container the test started, so that drop removes it.
    pub fn own_container(&mut self, name: &str) {
        self.containers.push(name.to_owned());
    }

    /// Makes a network of the test's own, removed on drop.
    pub fn create_network(&mut self, name: &str) -> Result<(), String> {
        docker(&[
            "network",
            "create",
            "--label",
            &format!("ratelimit.container-test={}", self.name),
            name,
        ])?;
        self.networks.push(name.to_owned());
        Ok(())
    }

    /// Removes a network the test made (after disconnecting what is still on it).
    pub fn remove_network(&mut self, name: &str) -> Result<(), String> {
        let attached = docker(&[
            "network",
            "inspect",
            "--format",
            "{{range $id, $c := .Containers}}{{$id}} {{end}}",
            name,
        ])
        .unwrap_or_default();
        for id in attached.split_whitespace() {
            let _ = docker(&["network", "disconnect", "--force", name, id]);
        }
        docker(&["network", "rm", name])?;
        self.networks.retain(|n| n != name);
        Ok(())
    }

    /// Waits until every container of the project reports `healthy`, or, for a one-shot service
    /// (no healthcheck), has exited 0; probing every 500 ms for at most `within`. Returns how
    /// long it took and how many containers there are.
    pub fn wait_healthy(&self, within: Duration) -> Result<(Duration, usize), String> {
        let start = Instant::now();
        loop {
            let ids = self.compose(&["ps", "-q"])?;
            let ids: Vec<&str> = ids.split_whitespace().collect();
            let mut args = vec![
                "inspect",
                "--format",
                "{{.Name}} {{.State.Status}} {{.State.ExitCode}} \
                 {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
            ];
            args.extend(&ids);
            let states = if ids.is_empty() {
                String::new()
            } else {
                docker(&args)?
            };
            let waiting: Vec<&str> = states
                .lines()
                .filter(|line| {
                    !(line.ends_with(" running 0 healthy") || line.ends_with(" exited 0 none"))
                })
                .collect();
            if !ids.is_empty() && waiting.is_empty() {
                return Ok((start.elapsed(), ids.len()));
            }
            // A one-shot that failed will not succeed by waiting.
            if let Some(failed) = waiting
                .iter()
                .find(|line| line.contains(" exited ") && line.ends_with(" none"))
            {
                return Err(format!("a one-shot service failed: {failed}"));
            }
            if start.elapsed() >= within {
                return Err(format!(
                    "not healthy within {within:?}: {}",
                    waiting.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Everything the project made: its own containers and networks, then `down -v`.
    pub fn tear_down(&mut self) {
        for container in std::mem::take(&mut self.containers) {
            let _ = docker(&["rm", "-f", "-v", &container]);
        }
        for network in std::mem::take(&mut self.networks) {
            let _ = self.remove_network(&network);
        }
        if let Err(e) = self.compose(&["down", "-v", "--remove-orphans", "-t", "2"]) {
            eprintln!("    teardown of project {} failed: {e}", self.name);
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        eprintln!(
            "==> removing compose project {} (containers, networks, volumes)",
            self.name
        );
        self.tear_down();
    }
}
