//! The Constant Contact V3 client. Knows no SQL and no jobs: token persistence and the
//! request budget reach it through the `TokenStore` and `RequestBudget` traits.

pub mod activities;
pub mod auth;
pub mod client;
pub mod convert;
pub mod dto;
pub mod error;
pub mod export_csv;
pub mod limiter;
pub mod oauth_flows;
pub mod page;

#[cfg(test)]
mod decode_props;

pub use auth::{Auth, OAuthClient, TokenSet, TokenStore};
pub use client::{AccountClient, Api, ApiOptions, ContactsQuery, CONTACT_INCLUDE};
pub use error::{AuthError, Error};
pub use limiter::{Budget, RequestBudget};
