"""Bytes in and out: one path abstraction for local files, S3 and HTTP (storage), and atomic writes of
files and directories (outputs). A new sink or store goes here."""
