//! Integration tests of the real `krops` binary and plugins; see tests/*.rs.
