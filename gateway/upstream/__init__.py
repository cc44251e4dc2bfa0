"""The upstream side: a lean HTTP/1.1 client and the one place where its exceptions become gateway errors."""
