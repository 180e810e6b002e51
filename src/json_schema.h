/* json_schema.h: JSON Schema (draft 2020-12 subset) -> GBNF for grammar.h.
 *
 *     char *gbnf;
 *     if (spud_json_schema_to_gbnf(text, len, true, &gbnf)) ... spud_last_error() ...
 *     spud_grammar_parse(gbnf, strlen(gbnf), &g);
 *     spud_free(gbnf);
 *
 * The grammar produces only instances that validate against the schema (it
 * may produce a subset of them: declared properties in declaration order, no
 * undeclared properties unless additionalProperties is a schema, keys of
 * additional properties from [A-Za-z0-9_], numbers of at most 15 integer and
 * 15 fraction digits, exponent only when unbounded, strings and arrays of at
 * most SPUD_JSON_SCHEMA_MAX_REPEAT elements when no lower maximum is given,
 * dates without February 29, a pattern's repetitions bounded so that its
 * strings meet minLength/maxLength). The value ends the output: no
 * whitespace after it.
 *
 * Supported: type (a name or a list), properties, required,
 * additionalProperties, items, prefixItems, minItems, maxItems, enum, const,
 * anyOf, oneOf (when the branches are provably disjoint), allOf (merged),
 * $ref to "#", "#/$defs/...", "#/definitions/..." or any JSON pointer into
 * the document (recursion included), $defs/definitions, minLength,
 * maxLength, pattern (ECMAScript syntax without lookaround, backreferences
 * or \b), format (date, time, date-time, uuid, email), minimum, maximum,
 * exclusiveMinimum, exclusiveMaximum; annotations (title, description,
 * default, examples, $schema, $id, $comment, deprecated, readOnly,
 * writeOnly) are ignored. In strict mode any other keyword, or a
 * combination that cannot be enforced exactly, is an error that names the
 * keyword and its JSON pointer ("json schema: /properties/tags: ...");
 * without strict mode such keywords are ignored (best effort). Strings of
 * the document (keys included) must be valid UTF-8.
 *
 * Errors: SPUD_ERR_FORMAT (malformed JSON, invalid schema),
 * SPUD_ERR_UNSUPPORTED (strict mode: a keyword or combination it cannot
 * enforce), SPUD_ERR_NOMEM.
 *
 * Thread safety: no global state; calls may run in parallel.
 */
#ifndef SPUD_JSON_SCHEMA_H
#define SPUD_JSON_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include "core.h"

struct json_object;

#define SPUD_JSON_SCHEMA_MAX_REPEAT 2048 /* cap on unbounded string lengths / array sizes */

/* The GBNF of a schema given as JSON text (caller frees *gbnf with spud_free). */
spud_status spud_json_schema_to_gbnf(const char *json, size_t len, bool strict, char **gbnf);
/* The same from a parsed json-c object (not modified). */
spud_status spud_json_schema_obj_to_gbnf(struct json_object *schema, bool strict, char **gbnf);
/* The GBNF of "any JSON object" (response_format {"type": "json_object"}). */
spud_status spud_json_schema_any_object_gbnf(char **gbnf);

/* Several schemas in one grammar (tool calls): add schemas and rules, then
 * finish with the body of `root`. Rule names made here start with the
 * name hints given (sanitised to [a-zA-Z0-9-]). */
typedef struct spud_gbnf_builder spud_gbnf_builder;
spud_gbnf_builder *spud_gbnf_builder_new(bool strict); /* NULL: out of memory */
void spud_gbnf_builder_free(spud_gbnf_builder *b);
/* Compile schema (resolving $ref inside `schema` itself); *rule is the name
 * of its rule, owned by the builder. */
spud_status spud_gbnf_builder_add_schema(spud_gbnf_builder *b, struct json_object *schema,
                                         const char *name_hint, const char **rule);
/* A rule with a given body (GBNF); the name is made unique and returned. */
spud_status spud_gbnf_builder_add_rule(spud_gbnf_builder *b, const char *name_hint, const char *body,
                                       const char **rule);
/* Append a GBNF string literal for bytes s[0..n) to a NUL-terminated
 * heap string (*buf, spud_malloc'd; may be NULL). */
spud_status spud_gbnf_append_literal(char **buf, const char *s, size_t n);
/* The whole grammar: "root ::= root_body" followed by every rule. */
spud_status spud_gbnf_builder_finish(spud_gbnf_builder *b, const char *root_body, char **gbnf);

#endif
