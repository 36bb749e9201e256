//! S3 access for queries: settings, credentials from the AWS default chain,
//! and an object store registry that opens any `s3://bucket` on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};

use crate::confine::{Confined, LocalFiles};
use object_store::aws::{AmazonS3, AmazonS3Builder, AwsCredential};
use object_store::{ClientOptions, CredentialProvider, ObjectStore, RetryConfig};
use url::Url;

/// How to reach S3. Empty fields fall back to the AWS SDK's own sources
/// (`AWS_REGION`, `AWS_ENDPOINT_URL_S3`, profiles, ...).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct S3Settings {
    pub region: Option<String>,
    /// A custom endpoint such as `http://127.0.0.1:9000` for an S3-compatible
    /// server; requests then use path-style addressing.
    pub endpoint: Option<String>,
    /// Most concurrent requests per store (range reads, parts of uploads).
    pub max_concurrency: Option<usize>,
    /// The local directories SQL may read and write (see
    /// [`crate::confine::LocalFiles::parse`]); any when unset.
    #[serde(default)]
    pub local_roots: Option<Vec<String>>,
}

/// Credentials and settings resolved once; cheap to clone.
#[derive(Clone)]
pub struct S3Access {
    region: String,
    endpoint: Option<String>,
    credentials: Option<Arc<ChainCredentials>>,
    max_concurrency: usize,
    local: LocalFiles,
}

impl std::fmt::Debug for S3Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Access")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

const DEFAULT_REGION: &str = "us-east-1";
const DEFAULT_CONCURRENCY: usize = 16;

/// The local files SQL may read and write: any without settings.
pub fn local_files(s3: Option<&S3Access>) -> &LocalFiles {
    static ANY: LocalFiles = LocalFiles::Any;
    s3.map_or(&ANY, |s| &s.local)
}

impl S3Access {
    /// Resolves the region and the credential chain: environment, shared
    /// profile, web identity (IRSA), EKS Pod Identity / ECS container
    /// credentials, then instance metadata. Nothing is fetched until a
    /// request needs it.
    pub async fn load(settings: &S3Settings) -> S3Access {
        // The region comes from the settings or the environment (EKS sets
        // AWS_REGION in pods with IRSA or Pod Identity), never from instance
        // metadata: asking it where there is none stalls and warns.
        let region = settings
            .region
            .clone()
            .or_else(|| env_value("AWS_REGION"))
            .or_else(|| env_value("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let config = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(region.clone()))
            .load()
            .await;
        let endpoint = settings
            .endpoint
            .clone()
            .or_else(|| env_value("AWS_ENDPOINT_URL_S3"))
            .or_else(|| env_value("AWS_ENDPOINT_URL"));
        S3Access {
            region,
            endpoint,
            credentials: config
                .credentials_provider()
                .map(|p| Arc::new(ChainCredentials::new(p))),
            max_concurrency: settings.max_concurrency.unwrap_or(DEFAULT_CONCURRENCY),
            // Checked where the setting is read; a bad one allows nothing.
            local: LocalFiles::parse(settings.local_roots.as_deref())
                .unwrap_or(LocalFiles::Under(Vec::new())),
        }
    }

    /// A store for one bucket, with at most `max_concurrency` requests in flight.
    pub fn store(&self, bucket: &str) -> Result<Arc<dyn ObjectStore>> {
        Ok(Arc::new(object_store::limit::LimitStore::new(
            self.multipart_store(bucket)?,
            self.max_concurrency,
        )))
    }

    /// The bucket's store itself, for multipart uploads completed later.
    pub fn multipart_store(&self, bucket: &str) -> Result<AmazonS3> {
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(&self.region)
            .with_retry(RetryConfig {
                max_retries: 3,
                retry_timeout: Duration::from_secs(30),
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(120))
                    .with_pool_max_idle_per_host(self.max_concurrency),
            );
        if let Some(e) = &self.endpoint {
            b = b
                .with_endpoint(e)
                .with_allow_http(e.starts_with("http://"))
                .with_virtual_hosted_style_request(false);
        }
        match &self.credentials {
            Some(c) => b = b.with_credentials(c.clone()),
            None => b = b.with_skip_signature(true),
        }
        b.build()
            .map_err(|e| DataFusionError::External(Box::new(e)))
    }
}

fn env_value(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// The AWS SDK's provider chain behind object_store's credential interface,
/// with credentials kept until shortly before they expire.
pub struct ChainCredentials {
    provider: SharedCredentialsProvider,
    cached: Mutex<Option<(Arc<AwsCredential>, Option<SystemTime>)>>,
}

impl std::fmt::Debug for ChainCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainCredentials")
    }
}

/// Credentials this close to their expiry are fetched anew.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

impl ChainCredentials {
    fn new(provider: SharedCredentialsProvider) -> ChainCredentials {
        ChainCredentials {
            provider,
            cached: Mutex::new(None),
        }
    }
}

#[async_trait::async_trait]
impl CredentialProvider for ChainCredentials {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        if let Some((c, expiry)) = self
            .cached
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            let fresh = expiry.is_none_or(|e| {
                e.duration_since(SystemTime::now())
                    .is_ok_and(|left| left > REFRESH_BEFORE)
            });
            if fresh {
                return Ok(c);
            }
        }
        let c = self.provider.provide_credentials().await.map_err(|e| {
            object_store::Error::Generic {
                store: "S3",
                source: format!("no AWS credentials: {}", crate::error::chain(&e)).into(),
            }
        })?;
        let credential = Arc::new(AwsCredential {
            key_id: c.access_key_id().to_string(),
            secret_key: c.secret_access_key().to_string(),
            token: c.session_token().map(str::to_string),
        });
        *self.cached.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((credential.clone(), c.expiry()));
        Ok(credential)
    }
}

/// A non-S3 store's key in `Registry::opened`; S3 buckets go by their name.
fn store_key(url: &Url) -> String {
    format!("{}://{}", url.scheme(), url.authority())
}

/// Local files as DataFusion has them, plus any `s3://bucket` opened on
/// first use with the cluster's S3 settings. Parquet footers are checked as
/// they are read (`footer::FooterCheck`).
#[derive(Debug)]
pub struct Registry {
    inner: DefaultObjectStoreRegistry,
    s3: Option<S3Access>,
    opened: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl Registry {
    pub fn new(s3: Option<S3Access>) -> Registry {
        Registry {
            inner: DefaultObjectStoreRegistry::new(),
            s3,
            opened: Mutex::new(HashMap::new()),
        }
    }
}

impl ObjectStoreRegistry for Registry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        opened.remove(&store_key(url));
        self.inner.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if url.scheme() != "s3" {
            // One wrapper per store, so what it learns from a listing is
            // there for the reads that follow.
            let key = store_key(url);
            let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = opened.get(&key) {
                return Ok(s.clone());
            }
            let mut inner = self.inner.get_store(url)?;
            if url.scheme() == "file" {
                let local = local_files(self.s3.as_ref());
                match local {
                    LocalFiles::Any => {}
                    LocalFiles::Under(roots) if roots.is_empty() => {
                        return Err(DataFusionError::Plan(local.refusal(url.as_str())));
                    }
                    LocalFiles::Under(_) => {
                        inner = Arc::new(Confined::new(inner, local.clone()));
                    }
                }
            }
            let store: Arc<dyn ObjectStore> = Arc::new(crate::footer::FooterCheck::new(inner));
            opened.insert(key, store.clone());
            return Ok(store);
        }
        let bucket = url.host_str().unwrap_or_default();
        if bucket.is_empty() {
            return Err(DataFusionError::Plan(format!(
                "{url} names no bucket; S3 paths look like s3://bucket/prefix/"
            )));
        }
        let Some(s3) = &self.s3 else {
            return Err(DataFusionError::Plan(format!(
                "{url}: S3 access is not configured on this cluster"
            )));
        };
        let mut opened = self.opened.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = opened.get(bucket) {
            return Ok(s.clone());
        }
        let store: Arc<dyn ObjectStore> =
            Arc::new(crate::footer::FooterCheck::new(s3.store(bucket)?));
        opened.insert(bucket.to_string(), store.clone());
        Ok(store)
    }
}
