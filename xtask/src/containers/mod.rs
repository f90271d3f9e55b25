//! The container topology, tested as it ships: `cargo xtask images` and
//! `cargo xtask container-test`.
//!
//! The test builds docker/Dockerfile through docker-compose.yml (the same files a user runs),
//! with the local stand-in base images of [`standin`] put in through the compose variables,
//! starts the stack under a project name of its own, checks it from client containers
//! ([`client`], [`scenarios`]) and removes its project on the way out, also when it fails.

mod client;
mod cluster;
mod docker;
mod partition;
mod redis;
mod scenarios;
mod standin;

use std::time::{Duration, Instant};

use docker::{ComposeTool, Project};

/// How long the stack may take to become healthy before the test fails.
const HEALTHY_BOUND: Duration = Duration::from_secs(300);

/// `cargo xtask images [--remove]`: makes the stand-in base images (or removes them).
pub fn images(args: &[String]) -> Result<(), String> {
    docker::require_engine()?;
    if args.iter().any(|a| a == "--remove") {
        return standin::remove();
    }
    crate::setup_wasm_target()?;
    standin::ensure().map(|_| ())
}

/// `xtask container-client ENVOY`: the client program inside a client container.
pub fn client(args: &[String]) -> Result<(), String> {
    client::serve(args)
}

/// `cargo xtask container-test`.
pub fn test() -> Result<(), String> {
    let started = Instant::now();
    docker::require_engine()?;
    let tool = ComposeTool::detect()?;
    crate::setup_wasm_target()?;
    crate::step("stand-in base images (made once, then kept)");
    let standins = standin::ensure()?;
    let images_done = started.elapsed();

    let name = format!("rlct{}", std::process::id());
    let mut env = standins.compose_env();
    // Nothing of the test is reachable from outside this host, and it collides with no running
    // demo: Envoy's ports go to free loopback ports. The clients use the `edge` network.
    env.push(("ENVOY_PORT".to_owned(), "127.0.0.1:0".to_owned()));
    env.push(("ENVOY_ADMIN_PORT".to_owned(), "0".to_owned()));
    // The opt-in profiles too: Prometheus scraping the stack, and the limiter on a Redis
    // Cluster behind an Envoy of its own.
    env.push((
        "COMPOSE_PROFILES".to_owned(),
        "monitoring,cluster".to_owned(),
    ));
    env.push(("PROMETHEUS_PORT".to_owned(), "0".to_owned()));
    env.push(("ENVOY_CLUSTER_PORT".to_owned(), "127.0.0.1:0".to_owned()));
    // Envoy's rules from a copy, which a scenario changes while the stack runs.
    let rules = scenarios::RulesDir::copy_of_shipped(&name)?;
    env.push(("RULES_DIR".to_owned(), rules.path().display().to_string()));
    let mut project = Project::new(tool.clone(), &name, env.clone());
    {
        // Ctrl-C still removes the project.
        let (tool, name, env) = (tool, name.clone(), env);
        ctrlc::set_handler(move || {
            Project::new(tool.clone(), &name, env.clone()).tear_down();
            std::process::exit(130);
        })
        .map_err(|e| format!("cannot handle Ctrl-C: {e}"))?;
    }

    crate::step(&format!(
        "building the images with docker-compose.yml (project {name})"
    ));
    let build_start = Instant::now();
    // `--force-rm`: a failed build step leaves no intermediate container behind.
    project.compose_shown(&["build", "--force-rm"])?;
    let built = build_start.elapsed();

    crate::step("starting the stack");
    let up_start = Instant::now();
    // `up` itself fails when a one-shot service (the cluster's formation) fails.
    let started_up = project
        .compose(&["up", "-d"])
        .and_then(|_| project.wait_healthy(HEALTHY_BOUND));
    let (healthy, containers) = match started_up {
        Ok((_, containers)) => (up_start.elapsed(), containers),
        Err(e) => {
            let logs = project
                .compose(&["logs", "--tail", "20"])
                .unwrap_or_default();
            return Err(format!("{e}\n{logs}"));
        }
    };
    println!(
        "container-test: stack healthy {:.1} s after `up` ({containers} containers, both \
         profiles included)",
        healthy.as_secs_f64()
    );

    crate::step("checking the stack from client containers");
    let result = scenarios::run(&mut project, &standins.debian, &rules);
    if result.is_err() {
        // Redis and Sentinel too: a failover that does not settle is only visible there.
        let services = [
            "limitd-1",
            "limitd-2",
            "envoy",
            "redis-master",
            "redis-replica-1",
            "redis-replica-2",
            "sentinel-1",
            "sentinel-2",
            "sentinel-3",
            "envoy-cluster",
            "limitd-cluster-1",
            "limitd-cluster-2",
            "redis-cluster-init",
        ];
        let mut args = vec!["logs", "--tail", "30"];
        args.extend(services);
        args.extend(cluster::NODES);
        if let Ok(logs) = project.compose(&args) {
            eprintln!("{logs}");
        }
    }
    drop(project);
    result?;
    println!(
        "container-test: passed in {:.0} s (stand-in images {:.0} s, image build {:.0} s, \
         stack healthy {:.0} s)",
        started.elapsed().as_secs_f64(),
        images_done.as_secs_f64(),
        built.as_secs_f64(),
        healthy.as_secs_f64()
    );
    Ok(())
}
