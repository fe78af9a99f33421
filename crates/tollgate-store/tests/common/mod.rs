//! Setup shared by the store's integration tests.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use tollgate_core::config::StoreConfig;
use tollgate_store::{Clock, Store, SubStatus, TenantView};

/// A store opened on `cfg` with tenant `t` and the active consumers `consumers` on plan `p`.
pub async fn store_with_consumers(
    cfg: &StoreConfig,
    clock: Arc<dyn Clock>,
    consumers: &[&str],
) -> Store {
    let store = Store::open(cfg, clock).unwrap();
    store
        .upsert_tenant(
            TenantView {
                id: "t".into(),
                name: "T".into(),
                contact_email: None,
                upgrade_url: None,
                top_up_url: None,
            },
            "api",
        )
        .await
        .unwrap();
    for c in consumers {
        store
            .create_consumer(c, "t", None, "p", SubStatus::Active, None, "api")
            .await
            .unwrap();
    }
    store
}
