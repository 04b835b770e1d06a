//! The library's error type: each variant carries what a person needs to fix the problem.
