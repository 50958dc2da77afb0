//! The database. SQLite or PostgreSQL is chosen here, once, at start
//! ([`db::Db::open`]); nothing outside this folder names a backend.
pub mod db;
#[cfg(test)]
mod login_tests;
pub mod model;
pub mod pgfast;
pub mod pgtls;
pub mod postgres;
pub mod schema;
pub mod sql;
pub mod sqlite;
