//! Matchers shared by passes. They read a graph and never change it.
pub mod matchers;
