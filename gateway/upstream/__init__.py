"""The upstream side: a lean HTTP/1.1 client (pool, connection, response, codings, proxy) and the one place where its exceptions become gateway errors."""
