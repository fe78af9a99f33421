//! tollgate-admin
