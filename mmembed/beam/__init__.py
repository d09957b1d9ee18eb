"""Apache Beam wrappers: the only part of mmembed that imports apache_beam."""
