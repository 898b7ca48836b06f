//! The one pager of every `GET /contacts` walk (the incremental pull, the opt-out and
//! deletes sweeps, the reconcile's list groups and its full reads): it follows
//! `_links.next.href` as given, keeps exactly one page read ahead (fetched on a spawned task
//! while the caller applies the page in hand), and carries the caller's span into that task,
//! so a retry's log line names its run.

use anyhow::Context;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info_span, Instrument};
use url::Url;

use crate::ctct::dto::PagingLinks;
use crate::ctct::page::ContactsPage;
use crate::ctct::{AccountClient, Error as ApiError};

/// One page and where it stands in the walk.
pub struct Page {
    pub page: ContactsPage,
    /// 1-based.
    pub number: u64,
    /// No next link: the walk ends with this page.
    pub last: bool,
}

/// Pages of `GET /contacts` from a first URL, one read ahead.
pub struct Pager {
    client: AccountClient,
    in_flight: Option<AbortOnDropHandle<Result<ContactsPage, ApiError>>>,
    /// A first page fetched before the pager was made ([`Pager::starting_with`]).
    ready: Option<ContactsPage>,
    fetched: u64,
}

impl Pager {
    /// Starts fetching `first` at once.
    pub fn new(client: &AccountClient, first: Url) -> Pager {
        let mut p = Pager {
            client: client.clone(),
            in_flight: None,
            ready: None,
            fetched: 0,
        };
        p.fetch(first);
        p
    }

    /// A walk whose first page is already in hand (read to decide how to walk): it is
    /// handed out first, and only then is the next one fetched.
    pub fn starting_with(client: &AccountClient, first: ContactsPage) -> Pager {
        Pager {
            client: client.clone(),
            in_flight: None,
            ready: Some(first),
            fetched: 0,
        }
    }

    fn fetch(&mut self, url: Url) {
        let c = self.client.clone();
        // Created here, under the caller's span: the spawned fetch keeps the run's context.
        let span = info_span!("fetch_page", page = self.fetched + 1);
        self.in_flight = Some(AbortOnDropHandle::new(tokio::spawn(
            async move { c.contacts_page(url).await }.instrument(span),
        )));
    }

    /// Pages fetched so far (the one in flight not counted).
    pub fn fetched(&self) -> u64 {
        self.fetched
    }

    /// The next page (and the fetch of the one after it started), or `None` after the last.
    pub async fn next(&mut self) -> anyhow::Result<Option<Page>> {
        let number = self.fetched + 1;
        let page = if let Some(p) = self.ready.take() {
            p
        } else {
            let Some(h) = self.in_flight.take() else {
                return Ok(None);
            };
            h.await
                .context("page fetch task ended abnormally")?
                .with_context(|| {
                    format!(
                        "fetching page {number} of contacts for account {}",
                        self.client.account()
                    )
                })?
        };
        self.fetched = number;
        if let Some(href) = PagingLinks::next_href(&page.links) {
            let next = self.client.next_url(href)?;
            self.fetch(next);
        }
        Ok(Some(Page {
            page,
            number,
            last: self.in_flight.is_none(),
        }))
    }
}
