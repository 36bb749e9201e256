//! Which local files SQL may read and write: any (a laptop, `daskrs local`)
//! or only those under given directories (a cluster on Kubernetes: none
//! unless its spec allows some), so that a query cannot read the pods'
//! secrets or `/proc`, nor write over their files.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

/// The setting that allows local directories, as errors name it.
pub const SETTING: &str = "--sql-local-roots (DASKRS_SQL_LOCAL_ROOTS)";

/// The local files SQL may touch.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LocalFiles {
    #[default]
    Any,
    /// Only files under these directories (none when empty), each as an
    /// object-store path: absolute, without its leading `/`.
    Under(Vec<String>),
}

impl LocalFiles {
    /// From the setting's value: unset allows any file; `none` (or
    /// nothing) none; else a list of absolute directories.
    pub fn parse(roots: Option<&[String]>) -> std::result::Result<LocalFiles, String> {
        let Some(roots) = roots else {
            return Ok(LocalFiles::Any);
        };
        let mut under = Vec::new();
        for r in roots.iter().map(|r| r.trim()) {
            if r.is_empty() || r == "none" {
                continue;
            }
            if !r.starts_with('/') || r.split('/').any(|part| part == "." || part == "..") {
                return Err(format!(
                    "{SETTING}: {r:?} is not an absolute directory without `.` or `..`"
                ));
            }
            let dir = r.trim_matches('/').to_string();
            under.push(dir);
        }
        Ok(LocalFiles::Under(under))
    }

    /// Whether `path` (an object-store path of the local file system) is allowed.
    pub fn allows(&self, path: &Path) -> bool {
        match self {
            LocalFiles::Any => true,
            LocalFiles::Under(roots) => {
                let p = path.as_ref();
                roots.iter().any(|r| {
                    r.is_empty()
                        || p == r
                        || p.strip_prefix(r.as_str())
                            .is_some_and(|rest| rest.starts_with('/'))
                })
            }
        }
    }

    /// Whether the local file `path` (made absolute against the current
    /// directory) is allowed; a path that climbs with `..` is not, unless
    /// any file is.
    ///
    /// Symbolic links are followed first, in the path and in the roots: a
    /// link under a root that leads out of it does not open the way.
    pub fn allows_file(&self, path: &std::path::Path) -> bool {
        self.real_roots().is_none_or(|roots| within(&roots, path))
    }

    /// The roots with their symbolic links resolved; None when any file goes.
    fn real_roots(&self) -> Option<Vec<std::path::PathBuf>> {
        let LocalFiles::Under(roots) = self else {
            return None;
        };
        Some(
            roots
                .iter()
                .map(|r| resolved(std::path::Path::new(&format!("/{r}"))))
                .collect(),
        )
    }

    /// An error for the local file `path` unless it is allowed.
    pub fn check_file(&self, path: &std::path::Path) -> datafusion::error::Result<()> {
        if self.allows_file(path) {
            return Ok(());
        }
        Err(datafusion::error::DataFusionError::Plan(
            self.refusal(&path.display().to_string()),
        ))
    }

    /// Why a local path is refused, naming the setting.
    pub fn refusal(&self, what: &str) -> String {
        let allowed = match self {
            LocalFiles::Under(roots) if !roots.is_empty() => format!(
                "only files under {}",
                roots
                    .iter()
                    .map(|r| format!("/{r}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => "no local files".to_string(),
        };
        format!(
            "{what}: SQL on this cluster reads and writes object-store URLs (s3://bucket/path) and {allowed}; \
             {SETTING} names the local directories it may use"
        )
    }
}

/// Whether `path`, made absolute and with its links resolved, lies under
/// one of the (resolved) `roots`; a path that climbs with `..` does not.
fn within(roots: &[std::path::PathBuf], path: &std::path::Path) -> bool {
    let Ok(abs) = std::path::absolute(path) else {
        return false;
    };
    if abs
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return false;
    }
    let real = resolved(&abs);
    roots.iter().any(|root| real.starts_with(root))
}

/// `path` with the symbolic links of its longest existing part resolved;
/// the part that does not exist yet (a file about to be written) follows
/// as it is.
fn resolved(path: &std::path::Path) -> std::path::PathBuf {
    let mut existing = path;
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = std::fs::canonicalize(existing) {
            return rest.iter().rev().fold(real, |p, part| p.join(part));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// The local file system, with every path checked against the roots.
#[derive(Debug)]
pub struct Confined {
    inner: Arc<dyn ObjectStore>,
    rules: Arc<Rules>,
}

/// The roots as given, and resolved once for the store's life (a store
/// lives as long as the session that opened it).
#[derive(Debug)]
struct Rules {
    local: LocalFiles,
    real_roots: Vec<std::path::PathBuf>,
}

impl Rules {
    fn allows(&self, path: &Path) -> bool {
        self.local.allows(path)
            && within(&self.real_roots, std::path::Path::new(&format!("/{path}")))
    }

    fn check(&self, path: &Path) -> Result<()> {
        if self.allows(path) {
            return Ok(());
        }
        Err(object_store::Error::PermissionDenied {
            path: format!("/{path}"),
            source: self.local.refusal(&format!("/{path}")).into(),
        })
    }
}

impl Confined {
    pub fn new(inner: Arc<dyn ObjectStore>, local: LocalFiles) -> Confined {
        let real_roots = local.real_roots().unwrap_or_default();
        Confined {
            inner,
            rules: Arc::new(Rules { local, real_roots }),
        }
    }

    fn check(&self, path: &Path) -> Result<()> {
        self.rules.check(path)
    }

    fn listing(
        &self,
        prefix: Option<&Path>,
        list: impl FnOnce() -> BoxStream<'static, Result<ObjectMeta>>,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let root = Path::default();
        match self.check(prefix.unwrap_or(&root)) {
            // What a link under a root leads to is not listed either.
            Ok(()) => {
                let rules = self.rules.clone();
                list()
                    .filter(move |m| {
                        let keep = m.as_ref().map_or(true, |m| rules.allows(&m.location));
                        futures::future::ready(keep)
                    })
                    .boxed()
            }
            Err(e) => futures::stream::once(async move { Err(e) }).boxed(),
        }
    }
}

impl fmt::Display for Confined {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Confined({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Confined {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check(location)?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.check(location)?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let rules = self.rules.clone();
        let checked = locations
            .map(move |p| {
                let p = p?;
                rules.check(&p)?;
                Ok(p)
            })
            .boxed();
        self.inner.delete_stream(checked)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(prefix, || self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.listing(prefix, || self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.check(prefix.unwrap_or(&Path::default()))?;
        let mut listed = self.inner.list_with_delimiter(prefix).await?;
        listed.objects.retain(|m| self.rules.allows(&m.location));
        listed.common_prefixes.retain(|p| self.rules.allows(p));
        Ok(listed)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.check(from)?;
        self.check(to)?;
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    fn roots(r: &[&str]) -> LocalFiles {
        LocalFiles::parse(Some(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>())).unwrap()
    }

    #[test]
    fn paths_are_allowed_under_the_roots_only() {
        let l = roots(&["/data/", "/mnt/scratch"]);
        assert!(l.allows(&Path::from("data/t/part-0.parquet")));
        assert!(l.allows(&Path::from("data")));
        assert!(l.allows(&Path::from("mnt/scratch/x.csv")));
        assert!(!l.allows(&Path::from("database/x.csv")));
        assert!(!l.allows(&Path::from("proc/self/environ")));
        assert!(!l.allows(&Path::default()));
        assert!(!roots(&["none"]).allows(&Path::from("data/x")));
        assert!(LocalFiles::Any.allows(&Path::from("proc/self/environ")));
        // The whole file system, when a root is `/`.
        assert!(roots(&["/"]).allows(&Path::from("etc/passwd")));
        // Files given as paths, as COPY writes them.
        let l = roots(&["/data"]);
        assert!(l.allows_file(std::path::Path::new("/data/out/part-0.csv")));
        assert!(!l.allows_file(std::path::Path::new("/data/../etc/passwd")));
        assert!(!l.allows_file(std::path::Path::new("/etc/passwd")));
        assert!(LocalFiles::Any.allows_file(std::path::Path::new("/data/../etc/passwd")));
    }

    #[test]
    fn a_setting_that_is_not_absolute_or_climbs_is_refused_naming_it() {
        for bad in ["data", "/data/../etc", "./x"] {
            let err = LocalFiles::parse(Some(&[bad.to_string()])).unwrap_err();
            assert!(
                err.contains("DASKRS_SQL_LOCAL_ROOTS") && err.contains(bad),
                "{err}"
            );
        }
        assert_eq!(LocalFiles::parse(None), Ok(LocalFiles::Any));
        assert_eq!(
            LocalFiles::parse(Some(&[String::new()])),
            Ok(LocalFiles::Under(vec![]))
        );
    }

    #[tokio::test]
    async fn a_confined_store_refuses_reads_writes_and_listings_outside_its_roots() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_str().unwrap().to_string();
        let local: Arc<dyn ObjectStore> = Arc::new(object_store::local::LocalFileSystem::new());
        let store = Confined::new(
            local,
            LocalFiles::parse(Some(std::slice::from_ref(&root))).unwrap(),
        );
        let inside = Path::from(format!("{}/a.txt", root.trim_start_matches('/')));
        store
            .put(&inside, PutPayload::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(
            store.get(&inside).await.unwrap().bytes().await.unwrap(),
            "hi"
        );
        let outside = Path::from("etc/hostname");
        let err = store.get(&outside).await.unwrap_err().to_string();
        assert!(
            err.contains("/etc/hostname") && err.contains("DASKRS_SQL_LOCAL_ROOTS"),
            "{err}"
        );
        assert!(
            store
                .put(&outside, PutPayload::from_static(b"x"))
                .await
                .is_err()
        );
        // A link under the root that leads out of it is refused.
        std::os::unix::fs::symlink("/etc", dir.path().join("etc")).unwrap();
        let through = Path::from(format!("{}/etc/hostname", root.trim_start_matches('/')));
        let err = store.get(&through).await.unwrap_err().to_string();
        assert!(err.contains("DASKRS_SQL_LOCAL_ROOTS"), "{err}");
        let l = LocalFiles::parse(Some(std::slice::from_ref(&root))).unwrap();
        assert!(!l.allows_file(&dir.path().join("etc/passwd")));
        assert!(l.allows_file(&dir.path().join("new/part-0.parquet")));
        let listed: Vec<_> = store.list(Some(&Path::from("etc"))).collect().await;
        assert!(matches!(listed.as_slice(), [Err(_)]));
        let listed: Vec<_> = store
            .list(Some(&Path::from(root.trim_start_matches('/'))))
            .collect()
            .await;
        assert_eq!(listed.len(), 1);
        assert!(listed[0].is_ok());
    }
}
