//! What a pod's container is started with on the test node: the program,
//! its arguments, its environment and its working directory, resolved as
//! the kubelet resolves them (`$(VAR)` references, `fieldRef`,
//! `secretKeyRef`, `configMapKeyRef`, `envFrom`), then translated from the
//! pod's view of the world to this machine's:
//!
//! - an address to listen on of `0.0.0.0` becomes the pod's own address: in
//!   a cluster the pod has a network namespace of its own, so binding every
//!   interface there means binding the pod's address, not the machine's;
//! - a path under a volume mount becomes the path of that volume's
//!   directory on the node (emptyDir volumes are fresh directories; other
//!   kinds are mounted empty, as the daskrs processes read none);
//! - a Service name becomes the Service's address (see `net`).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use kube::Api;

use super::net::ClusterNet;

/// The PATH of the images' Debian bases.
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The PATH of an image whose Python is `python`: its bin directory first.
fn venv_path(python: &Path) -> String {
    let bin = python
        .parent()
        .unwrap_or_else(|| panic!("{} has no directory", python.display()));
    format!("{}:{SYSTEM_PATH}", bin.display())
}

/// An image the node can run: its repository (any tag), the local binary
/// that is its entrypoint, and the environment and working directory the
/// image sets.
#[derive(Clone, Debug)]
pub struct Image {
    pub repository: String,
    pub entrypoint: PathBuf,
    pub workdir: String,
    pub env: Vec<(String, String)>,
}

impl Image {
    /// The daskrs runtime image as the Dockerfile's `runtime` target makes
    /// it, with the workspace's `daskrs` binary as its entrypoint.
    pub fn daskrs(repository: &str, entrypoint: &Path) -> Image {
        Image {
            repository: repository.to_string(),
            entrypoint: entrypoint.to_path_buf(),
            workdir: "/var/lib/daskrs".into(),
            env: vec![
                ("PATH".into(), SYSTEM_PATH.into()),
                (
                    "SSL_CERT_FILE".into(),
                    "/etc/ssl/certs/ca-certificates.crt".into(),
                ),
            ],
        }
    }

    /// The Dockerfile's `python-worker` image: the same entrypoint, with
    /// `python` standing for the image's CPython and the daskrs package
    /// installed in it, which `daskrs worker` runs Python tasks with
    /// (`DASKRS_PYTHON`).
    pub fn python(repository: &str, entrypoint: &Path, python: &Path) -> Image {
        Image {
            repository: repository.to_string(),
            entrypoint: entrypoint.to_path_buf(),
            workdir: "/var/lib/daskrs".into(),
            env: vec![
                ("PATH".into(), venv_path(python)),
                ("DASKRS_PYTHON".into(), python.display().to_string()),
            ],
        }
    }

    /// Dask's image (`ghcr.io/dask/dask`), which dask-kubernetes' pods
    /// name: its entrypoint (`tini -g -- /usr/bin/prepare.sh`) ends in
    /// `exec "$@"`, running the container's args. Here `/usr/bin/env` does,
    /// with the bin directory of `python`'s venv first on PATH, so that
    /// `dask-scheduler` and `dask-worker` are that venv's.
    pub fn dask(repository: &str, python: &Path) -> Image {
        Image {
            repository: repository.to_string(),
            entrypoint: PathBuf::from("/usr/bin/env"),
            workdir: "/".into(),
            env: vec![("PATH".into(), venv_path(python))],
        }
    }

    pub fn matches(&self, reference: &str) -> bool {
        let without_digest = reference.split('@').next().unwrap_or(reference);
        // A tag follows the last colon after the last slash.
        let repo = match without_digest.rsplit_once(':') {
            Some((r, tag)) if !tag.contains('/') => r,
            _ => without_digest,
        };
        repo == self.repository
    }
}

/// The Python the tests' python-worker image stands for: one with the
/// daskrs package installed, `$DASKRS_TEST_PYTHON`, else the newest
/// environment `scripts/test.sh` makes. Checked once: `import daskrs` must
/// work.
pub fn test_python() -> PathBuf {
    static CHECKED: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    CHECKED
        .get_or_init(|| {
            let python = find_test_python()?;
            let out = std::process::Command::new(&python)
                .args(["-c", "import daskrs"])
                .output()
                .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
            if !out.status.success() {
                return Err(format!(
                    "{} cannot import daskrs (scripts/test.sh installs the package built from this checkout):\n{}",
                    python.display(),
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            Ok(python)
        })
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

fn find_test_python() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("DASKRS_TEST_PYTHON").filter(|p| !p.is_empty()) {
        // Absolute, as pods run elsewhere; a venv's interpreter is a
        // symbolic link that must not be resolved.
        return std::path::absolute(&p)
            .map_err(|e| format!("DASKRS_TEST_PYTHON={}: {e}", Path::new(&p).display()));
    }
    let newest = std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".cache/daskrs/py-newest/bin/python"));
    match newest {
        Some(p) if p.exists() => Ok(p),
        _ => Err(
            "the python-worker image needs a Python with the daskrs package installed: \
             scripts/test.sh installs one (~/.cache/daskrs/py-newest), or set DASKRS_TEST_PYTHON"
                .into(),
        ),
    }
}

pub fn find_image<'a>(images: &'a [Image], reference: &str) -> Option<&'a Image> {
    images.iter().find(|i| i.matches(reference))
}

/// Why a container cannot start yet: the kubelet's waiting reason and message.
#[derive(Clone, Debug, PartialEq)]
pub struct Waiting {
    pub reason: String,
    pub message: String,
}

fn waiting(reason: &str, message: impl Into<String>) -> Waiting {
    Waiting {
        reason: reason.into(),
        message: message.into(),
    }
}

/// A container ready to start.
#[derive(Clone, Debug)]
pub struct Rendered {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub workdir: PathBuf,
}

/// The pod's only container.
pub fn container(pod: &Pod) -> Result<&Container, Waiting> {
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| waiting("CreateContainerConfigError", "the pod has no spec"))?;
    if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) || spec.containers.len() != 1 {
        return Err(waiting(
            "CreateContainerConfigError",
            "the test node runs pods of exactly one container and no init containers",
        ));
    }
    Ok(&spec.containers[0])
}

/// Resolves the container of `pod` for a start at address `ip`, with its
/// volumes under `pod_dir`.
pub async fn render(
    pod: &Pod,
    image: &Image,
    ip: Ipv4Addr,
    pod_dir: &Path,
    net: &ClusterNet,
    secrets: &Api<Secret>,
    config_maps: &Api<ConfigMap>,
) -> Result<Rendered, Waiting> {
    let c = container(pod)?;
    if c.command.is_some() {
        return Err(waiting(
            "CreateContainerError",
            "the test node runs the image's entrypoint; `command` is not supported",
        ));
    }
    let mounts = volume_mounts(pod, c, pod_dir)?;
    fill_secret_volumes(pod, pod_dir, secrets).await?;

    // The environment, in order: each value may refer to those before it.
    let mut env: Vec<(String, String)> = Vec::new();
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data: BTreeMap<String, String> = if let Some(s) = &from.secret_ref {
            secret_of(secrets, &s.name, s.optional == Some(true))
                .await?
                .unwrap_or_default()
        } else if let Some(m) = &from.config_map_ref {
            match config_maps.get_opt(&m.name).await {
                Ok(Some(cm)) => cm.data.unwrap_or_default(),
                Ok(None) if m.optional == Some(true) => BTreeMap::new(),
                Ok(None) => {
                    return Err(config_error(format!("configmap {:?} not found", m.name)));
                }
                Err(e) => return Err(config_error(format!("configmap {:?}: {e}", m.name))),
            }
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            set(&mut env, &format!("{prefix}{k}"), v);
        }
    }
    for var in c.env.iter().flatten() {
        let value = if let Some(v) = &var.value {
            Some(expand(v, &env))
        } else if let Some(from) = &var.value_from {
            if let Some(f) = &from.field_ref {
                Some(field(pod, &f.field_path, ip)?)
            } else if let Some(s) = &from.secret_key_ref {
                let optional = s.optional == Some(true);
                match secret_of(secrets, &s.name, optional).await? {
                    Some(mut data) => match data.remove(&s.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in Secret {}",
                                s.key, s.name
                            )));
                        }
                    },
                    None => None,
                }
            } else if let Some(m) = &from.config_map_key_ref {
                let optional = m.optional == Some(true);
                match config_maps.get_opt(&m.name).await {
                    Ok(Some(cm)) => match cm.data.unwrap_or_default().remove(&m.key) {
                        Some(v) => Some(v),
                        None if optional => None,
                        None => {
                            return Err(config_error(format!(
                                "couldn't find key {} in ConfigMap {}",
                                m.key, m.name
                            )));
                        }
                    },
                    Ok(None) if optional => None,
                    Ok(None) => {
                        return Err(config_error(format!("configmap {:?} not found", m.name)));
                    }
                    Err(e) => return Err(config_error(format!("configmap {:?}: {e}", m.name))),
                }
            } else {
                return Err(config_error(format!(
                    "the test node cannot resolve the source of ${}",
                    var.name
                )));
            }
        } else {
            Some(String::new())
        };
        if let Some(v) = value {
            set(&mut env, &var.name, v);
        }
    }
    let args: Vec<String> = c.args.iter().flatten().map(|a| expand(a, &env)).collect();

    // From the pod's view to this machine's.
    let to_node = |v: &str| -> Result<String, Waiting> {
        let v = own_address(v, ip);
        let v = map_path(&v, &mounts);
        if v.starts_with('/') {
            return Ok(v);
        }
        net.rewrite(&v)
            .map_err(|m| waiting("ContainerCreating", format!("waiting for cluster DNS: {m}")))
    };
    let mut out_env: Vec<(String, String)> = image.env.clone();
    let workdir = PathBuf::from(map_path(&image.workdir, &mounts));
    let root = pod_dir.join("root");
    let workdir = if workdir.starts_with(pod_dir) {
        workdir
    } else {
        root.clone()
    };
    std::fs::create_dir_all(&workdir).map_err(|e| {
        waiting(
            "CreateContainerError",
            format!("{}: {e}", workdir.display()),
        )
    })?;
    out_env.push(("HOME".into(), root.display().to_string()));
    out_env.push((
        "HOSTNAME".into(),
        pod.metadata.name.clone().unwrap_or_default(),
    ));
    // A volume at /tmp is the pod's /tmp: the process's temporary files go
    // there rather than to this machine's /tmp.
    if let Some((_, dir)) = mounts.iter().find(|(m, _)| m == "/tmp") {
        out_env.push(("TMPDIR".into(), dir.display().to_string()));
    }
    for (k, v) in env {
        let v = to_node(&v)?;
        set(&mut out_env, &k, v);
    }
    let args = args
        .iter()
        .map(|a| to_node(a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Rendered {
        program: image.entrypoint.clone(),
        args,
        env: out_env,
        workdir,
    })
}

fn config_error(message: String) -> Waiting {
    waiting("CreateContainerConfigError", message)
}

fn set(env: &mut Vec<(String, String)>, name: &str, value: String) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value,
        None => env.push((name.to_string(), value)),
    }
}

/// Writes each Secret volume's keys as files into its directory, as the
/// kubelet does when it starts a pod (later changes are not followed).
async fn fill_secret_volumes(
    pod: &Pod,
    pod_dir: &Path,
    secrets: &Api<Secret>,
) -> Result<(), Waiting> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    for v in volumes {
        let Some(name) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) else {
            continue;
        };
        let data = secret_of(secrets, &name, false).await?.unwrap_or_default();
        let dir = pod_dir.join("volumes").join(&v.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| waiting("CreateContainerError", format!("{}: {e}", dir.display())))?;
        for (key, value) in data {
            let path = dir.join(&key);
            std::fs::write(&path, value)
                .map_err(|e| waiting("CreateContainerError", format!("{}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// The data of the Secret `name`; `None` when it is missing and `optional`,
/// an error naming it when it is missing otherwise.
async fn secret_of(
    secrets: &Api<Secret>,
    name: &str,
    optional: bool,
) -> Result<Option<BTreeMap<String, String>>, Waiting> {
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => Ok(Some(secret_data(&secret))),
        Ok(None) if optional => Ok(None),
        Ok(None) => Err(config_error(format!("secret {name:?} not found"))),
        Err(e) => Err(config_error(format!("secret {name:?}: {e}"))),
    }
}

fn secret_data(secret: &Secret) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
        .collect();
    out.extend(secret.string_data.clone().unwrap_or_default());
    out
}

/// The kubelet's `$(VAR)` expansion: a reference to a defined variable is
/// replaced, `$$` stands for `$`, anything else stays as written.
pub fn expand(template: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(close) = inner.find(')')
        {
            let name = &inner[..close];
            match env.iter().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn field(pod: &Pod, path: &str, ip: Ipv4Addr) -> Result<String, Waiting> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let keyed = |map: &Option<BTreeMap<String, String>>, prefix: &str| {
        let key = path
            .strip_prefix(prefix)?
            .strip_prefix("['")?
            .strip_suffix("']")?;
        Some(map.as_ref()?.get(key).cloned().unwrap_or_default())
    };
    let v = match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" => ip.to_string(),
        "status.hostIP" | "status.hostIPs" => Ipv4Addr::LOCALHOST.to_string(),
        _ => keyed(&meta.labels, "metadata.labels")
            .or_else(|| keyed(&meta.annotations, "metadata.annotations"))
            .ok_or_else(|| config_error(format!("unsupported fieldRef {path}")))?,
    };
    Ok(v)
}

/// Mount paths of the container and the node directories behind them,
/// longest path first.
fn volume_mounts(
    pod: &Pod,
    c: &Container,
    pod_dir: &Path,
) -> Result<Vec<(String, PathBuf)>, Waiting> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        if !volumes.iter().any(|v| v.name == m.name) {
            return Err(config_error(format!(
                "volume mount {} names no volume of the pod",
                m.name
            )));
        }
        let mut dir = pod_dir.join("volumes").join(&m.name);
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            dir = dir.join(sub);
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| waiting("CreateContainerError", format!("{}: {e}", dir.display())))?;
        out.push((m.mount_path.trim_end_matches('/').to_string(), dir));
    }
    out.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
    Ok(out)
}

pub fn map_path(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, dir) in mounts {
        if value == mount {
            return dir.display().to_string();
        }
        if let Some(rest) = value.strip_prefix(mount.as_str())
            && rest.starts_with('/')
        {
            return format!("{}{rest}", dir.display());
        }
    }
    value.to_string()
}

pub fn own_address(value: &str, ip: Ipv4Addr) -> String {
    match value.strip_prefix("0.0.0.0") {
        Some("") => ip.to_string(),
        Some(rest) if rest.starts_with(':') => format!("{ip}{rest}"),
        _ => value.to_string(),
    }
}
