/* server.h: the OpenAI-compatible HTTP server (`spud serve`).
 *
 * Routes: GET /health, GET /metrics, GET /v1/models, POST /v1/chat/completions,
 * POST /v1/completions, POST /v1/responses (GET /v1/responses/ID), POST
 * /apply-template. Generation goes through one spud_engine; the HTTP side
 * (libmicrohttpd, a thread per connection) parses and validates requests,
 * renders chat templates, tokenizes, and turns the engine's deltas into JSON
 * or server-sent events. It never runs the forward pass.
 *
 * Usage (what `spud serve` does):
 *
 *     spud_server *s;
 *     spud_server_start(&params, &s);       // listening; /health answers 503
 *     spud_model_load(path, &mp, &model);
 *     spud_server_set_model(s, model, &engine_params);   // /health answers 200
 *     ... wait for SIGINT / SIGTERM ...
 *     spud_server_shutdown(s, 10.0);        // finish in-flight responses, bounded
 *     spud_server_free(s);
 *     spud_model_free(model);
 *
 * Thread safety: start, set_model, shutdown and free are called from one
 * thread; the server's own threads do the rest.
 */
#ifndef SPUD_SERVER_H
#define SPUD_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"

typedef struct spud_server spud_server;

typedef struct {
    const char *host;            /* address to bind (default 127.0.0.1) */
    uint16_t port;               /* 0: any free port (see spud_server_port) */
    const char *model_id;        /* the name /v1/models reports */
    const char *const *api_keys; /* accepted Bearer keys; none: no authentication */
    size_t n_api_keys;
    size_t max_body;             /* request body bytes (default 4 MiB) */
    size_t store_bytes;          /* stored Responses conversations (default 64 MiB) */
    int max_connections;         /* default 1024 */
} spud_server_params;

/* Bind and start serving (everything but /health answers 503 until a model is set). */
spud_status spud_server_start(const spud_server_params *p, spud_server **out);
uint16_t spud_server_port(const spud_server *s);
/* Start the engine on m (which must outlive the server) and begin answering. */
spud_status spud_server_set_model(spud_server *s, const spud_model *m, const spud_engine_params *ep);
/* Stop accepting connections, let in-flight requests finish for up to
 * timeout_s seconds, then cancel what is left and stop. */
void spud_server_shutdown(spud_server *s, double timeout_s);
void spud_server_free(spud_server *s);

#endif
