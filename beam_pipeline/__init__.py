"""Apache Beam batch captioning pipeline: match, decode, batch, infer, write Parquet."""
