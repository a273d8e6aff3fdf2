/*
 * Parser for the expression language: text -> simplified, hash-consed DAG.
 *
 *   program  := sep* stmt (sep+ stmt)* sep*        sep: ';' or newline
 *   stmt     := NAME '=' expr | expr               only the last is a bare expr
 *   expr     := or ('?' expr ':' expr)?            right associative
 *   or       := and ('||' and)*
 *   and      := cmp ('&&' cmp)*
 *   cmp      := add (('<'|'<='|'>'|'>='|'=='|'!=') add)?   no chaining
 *   add      := mul (('+'|'-') mul)*
 *   mul      := unary (('*'|'/') unary)*
 *   unary    := ('-'|'+'|'!') unary | power
 *   power    := primary ('**' unary)?              -x**2 = -(x**2), 2**-1 ok
 *   primary  := NUMBER | NAME | NAME '(' args ')' | '(' expr ')'
 *
 * Newlines inside parentheses are whitespace (as in Python). There is no
 * comment syntax; "//", slash-star and "#" get a dedicated error. Binary operators
 * loop (precedence climbing), so only open constructs recurse, and each of
 * those passes enter(), which stops at ZMLX_EXPR_MAX_NESTING before the
 * stack is at risk.
 *
 * Errors: the first error wins; the message is "LINE:COL: what" followed by
 * the source line (non-printable bytes shown as '?', long lines windowed)
 * and a caret under the column. Columns count bytes from 1.
 */
#include "gen/expr.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int name_is(const char *s, size_t len, const char *name) {
  return strlen(name) == len && memcmp(s, name, len) == 0;
}

static int is_keyword(const char *s, size_t len) {
  return name_is(s, len, "inf") || name_is(s, len, "nan");
}

/* ------------------------------------------------------------ symbols */

enum { SYM_INPUT, SYM_PARAM, SYM_LOCAL };

typedef struct sym {
  const char *name; /* not NUL-terminated: points into caller text */
  size_t len;
  int kind;
  int32_t value; /* input / parameter index, or node id of a local */
} sym;

typedef struct symtab {
  sym *slots; /* name == NULL: empty */
  uint32_t cap, count;
} symtab;

static uint32_t name_hash(const char *s, size_t len) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < len; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

static sym *sym_slot(symtab *t, const char *s, size_t len) {
  uint32_t mask = t->cap - 1;
  for (uint32_t i = name_hash(s, len) & mask;; i = (i + 1) & mask) {
    sym *slot = &t->slots[i];
    if (!slot->name || (slot->len == len && memcmp(slot->name, s, len) == 0)) return slot;
  }
}

static sym *sym_find(symtab *t, const char *s, size_t len) {
  if (!t->cap) return NULL;
  sym *slot = sym_slot(t, s, len);
  return slot->name ? slot : NULL;
}

static int sym_grow(symtab *t) {
  symtab n = {calloc(t->cap ? t->cap * 2 : 16, sizeof(sym)), t->cap ? t->cap * 2 : 16, 0};
  if (!n.slots) return 0;
  for (uint32_t i = 0; i < t->cap; i++)
    if (t->slots[i].name) {
      *sym_slot(&n, t->slots[i].name, t->slots[i].len) = t->slots[i];
      n.count++;
    }
  free(t->slots);
  *t = n;
  return 1;
}

/* Insert or overwrite; 0 on OOM. */
static int sym_set(symtab *t, const char *s, size_t len, int kind, int32_t value) {
  if ((t->count + 1) * 2 > t->cap && !sym_grow(t)) return 0;
  sym *slot = sym_slot(t, s, len);
  if (!slot->name) t->count++;
  *slot = (sym){s, len, kind, value};
  return 1;
}

/* ------------------------------------------------------------ lexer */

enum { TK_EOF, TK_NUM, TK_IDENT, TK_SEP, TK_OP };

enum {
  P_PLUS, P_MINUS, P_STAR, P_SLASH, P_POW, P_LT, P_LE, P_GT, P_GE, P_EQ, P_NE,
  P_AND, P_OR, P_NOT, P_QUESTION, P_COLON, P_LPAREN, P_RPAREN, P_COMMA, P_ASSIGN
};

static const char *const op_text[] = {"+",  "-",  "*",  "/",  "**", "<", "<=",
                                      ">",  ">=", "==", "!=", "&&", "||", "!",
                                      "?",  ":",  "(",  ")",  ",",  "="};

typedef struct token {
  int kind;
  int op; /* TK_OP: P_*; TK_SEP: the character */
  size_t pos, len;
  double num;
} token;

typedef struct parser {
  const char *src;
  size_t len;
  size_t pos; /* lexer cursor */
  int paren;  /* open '(' seen by the lexer: newlines inside are spaces */
  token tok;  /* current token */
  zmlx_expr *e;
  symtab syms;
  int depth;
  int failed;
} parser;

/* Render the message with its location, source line and caret. */
static void report(parser *p, size_t pos, const char *msg) {
  size_t line = 1, ls = 0;
  for (size_t i = 0; i < pos && i < p->len; i++)
    if (p->src[i] == '\n') line++, ls = i + 1;
  size_t le = ls;
  while (le < p->len && p->src[le] != '\n') le++;
  /* Window very long lines around the column so the caret stays visible. */
  size_t from = ls, to = le;
  if (to - from > 120) {
    from = pos > ls + 60 ? pos - 60 : ls;
    to = from + 120 < le ? from + 120 : le;
  }
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlxi_sb_printf(&sb, "%zu:%zu: %s\n  %s", line, pos - ls + 1, msg, from > ls ? "..." : "");
  for (size_t i = from; i < to; i++) {
    unsigned char ch = (unsigned char)p->src[i];
    char out = ch == '\t' ? ' ' : (ch < 0x20 || ch >= 0x7f ? '?' : (char)ch);
    zmlxi_sb_appendn(&sb, &out, 1);
  }
  zmlxi_sb_printf(&sb, "%s\n  %*s^", to < le ? "..." : "", (int)(pos - from + (from > ls ? 3 : 0)),
                 "");
  if (sb.oom)
    zmlxi_fail(ZMLX_ERR_PARSE, "%zu:%zu: %s", line, pos - ls + 1, msg);
  else
    zmlxi_fail(ZMLX_ERR_PARSE, "%s", sb.data);
  zmlxi_sb_free(&sb);
}

/* Out of line, like every helper with buffers that the recursive parse
 * functions call: their frames must stay small. */
#define OUT_OF_LINE __attribute__((noinline))

static OUT_OF_LINE void perr(parser *p, size_t pos, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static OUT_OF_LINE void perr(parser *p, size_t pos, const char *fmt, ...) {
  if (p->failed) return;
  p->failed = 1;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  report(p, pos, msg);
}

/* ASCII only, whatever the locale says about bytes >= 0x80. */
static int is_digit(int c) { return c >= '0' && c <= '9'; }
static int is_ident_start(int c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
}
static int is_ident_char(int c) { return is_ident_start(c) || is_digit(c); }

static int peekc(const parser *p, size_t at) {
  return at < p->len ? (unsigned char)p->src[at] : -1;
}

#define MAX_NUMBER_CHARS 400

/* Value of a validated number token. strtod reads the locale's decimal
 * point, and the language's is '.', so the token is rewritten without one
 * ("12.5e3" -> "125e2"): digits and an exponent read the same everywhere,
 * and strtod still rounds correctly. */
static double number_value(const char *s, size_t n) {
  char buf[MAX_NUMBER_CHARS + 32];
  size_t len = 0, i = 0;
  long frac = 0, exp10 = 0;
  for (; i < n && is_digit((unsigned char)s[i]); i++) buf[len++] = s[i];
  if (i < n && s[i] == '.')
    for (i++; i < n && is_digit((unsigned char)s[i]); i++, frac++) buf[len++] = s[i];
  if (i < n) { /* 'e' or 'E' */
    int neg = s[++i] == '-';
    if (s[i] == '-' || s[i] == '+') i++;
    /* Saturate: with at most MAX_NUMBER_CHARS digits, any exponent past
     * 100000 gives 0 or inf anyway. */
    for (; i < n; i++) exp10 = exp10 > 100000 ? exp10 : exp10 * 10 + (s[i] - '0');
    if (neg) exp10 = -exp10;
  }
  if (len == 0) buf[len++] = '0';
  snprintf(buf + len, sizeof buf - len, "e%ld", exp10 - frac);
  return strtod(buf, NULL);
}

static void lex_number(parser *p, token *t) {
  size_t s = p->pos, q = s;
  while (is_digit(peekc(p, q))) q++;
  if (peekc(p, q) == '.') {
    q++;
    while (is_digit(peekc(p, q))) q++;
  }
  if (peekc(p, q) == 'e' || peekc(p, q) == 'E') {
    size_t x = q + 1;
    if (peekc(p, x) == '+' || peekc(p, x) == '-') x++;
    if (!is_digit(peekc(p, x))) {
      perr(p, s, "malformed number: exponent without digits");
      return;
    }
    while (is_digit(peekc(p, x))) x++;
    q = x;
  }
  if (is_ident_char(peekc(p, q)) || peekc(p, q) == '.') {
    perr(p, s, "malformed number");
    return;
  }
  if (q - s > MAX_NUMBER_CHARS) {
    perr(p, s, "number too long (more than %d characters)", MAX_NUMBER_CHARS);
    return;
  }
  *t = (token){TK_NUM, 0, s, q - s, number_value(p->src + s, q - s)};
  p->pos = q;
}

static void lex_ident(parser *p, token *t) {
  size_t s = p->pos, q = s;
  while (is_ident_char(peekc(p, q))) q++;
  if (q - s > ZMLX_EXPR_MAX_IDENT) {
    perr(p, s, "identifier too long (more than %d characters)", ZMLX_EXPR_MAX_IDENT);
    return;
  }
  *t = (token){TK_IDENT, 0, s, q - s, 0.0};
  p->pos = q;
}

static int match_op(int c, int c2) {
  static const struct { char a, b; int op; } two[] = {
      {'*', '*', P_POW}, {'<', '=', P_LE}, {'>', '=', P_GE}, {'=', '=', P_EQ},
      {'!', '=', P_NE},  {'&', '&', P_AND}, {'|', '|', P_OR}};
  for (size_t i = 0; i < sizeof two / sizeof two[0]; i++)
    if (two[i].a == c && two[i].b == c2) return two[i].op + 100;
  static const char one[] = "+-*/<>!?:(),=";
  static const int one_op[] = {P_PLUS, P_MINUS, P_STAR, P_SLASH, P_LT, P_GT, P_NOT,
                               P_QUESTION, P_COLON, P_LPAREN, P_RPAREN, P_COMMA, P_ASSIGN};
  const char *hit = c > 0 ? strchr(one, c) : NULL;
  return hit ? one_op[hit - one] : -1;
}

static void lex_op(parser *p, token *t) {
  int c = peekc(p, p->pos), c2 = peekc(p, p->pos + 1);
  if ((c == '/' && (c2 == '*' || c2 == '/')) || c == '#') {
    perr(p, p->pos, "comments are not part of the expression language");
    return;
  }
  int op = match_op(c, c2);
  if (op < 0) {
    if (c == '&' || c == '|')
      perr(p, p->pos, "unexpected character '%c' (did you mean '%c%c'?)", c, c, c);
    else if (c >= 0x20 && c < 0x7f)
      perr(p, p->pos, "unexpected character '%c'", c);
    else
      perr(p, p->pos, "unexpected byte 0x%02x", (unsigned)c);
    return;
  }
  size_t n = op >= 100 ? 2 : 1;
  if (op >= 100) op -= 100;
  if (op == P_LPAREN) p->paren++;
  if (op == P_RPAREN && p->paren > 0) p->paren--;
  *t = (token){TK_OP, op, p->pos, n, 0.0};
  p->pos += n;
}

/* Read the next token into *t; on a lexical error p->failed is set and *t is
 * end of input. */
static OUT_OF_LINE void lex(parser *p, token *t) {
  for (;;) {
    int c = peekc(p, p->pos);
    if (c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v' ||
        (c == '\n' && p->paren > 0))
      p->pos++;
    else
      break;
  }
  *t = (token){TK_EOF, 0, p->pos, 0, 0.0};
  int c = peekc(p, p->pos);
  if (c < 0 || p->failed) return;
  if (c == '\n' || c == ';') {
    *t = (token){TK_SEP, c, p->pos, 1, 0.0};
    p->pos++;
  } else if (is_digit(c) || (c == '.' && is_digit(peekc(p, p->pos + 1)))) {
    lex_number(p, t);
  } else if (is_ident_start(c)) {
    lex_ident(p, t);
  } else {
    lex_op(p, t);
  }
  if (p->failed) *t = (token){TK_EOF, 0, p->pos, 0, 0.0};
}

static void next(parser *p) {
  if (p->e->failed) p->failed = 1; /* graph out of memory: stop quietly */
  if (p->failed) {
    p->tok.kind = TK_EOF;
    return;
  }
  lex(p, &p->tok);
}

/* The token after the current one, without consuming anything. */
static token peek(parser *p) {
  size_t pos = p->pos;
  int paren = p->paren;
  token t;
  lex(p, &t);
  p->pos = pos;
  p->paren = paren;
  return t;
}

static int at_op(const parser *p, int op) { return p->tok.kind == TK_OP && p->tok.op == op; }

static void describe(const parser *p, const token *t, char *buf, size_t cap) {
  switch (t->kind) {
    case TK_EOF: snprintf(buf, cap, "end of input"); break;
    case TK_SEP: snprintf(buf, cap, t->op == ';' ? "';'" : "end of line"); break;
    case TK_NUM:
      snprintf(buf, cap, "number '%.*s'", (int)(t->len > 40 ? 40 : t->len), p->src + t->pos);
      break;
    case TK_IDENT: snprintf(buf, cap, "'%.*s'", (int)t->len, p->src + t->pos); break;
    default: snprintf(buf, cap, "'%s'", op_text[t->op]); break;
  }
}

static void line_col(const parser *p, size_t pos, size_t *line, size_t *col) {
  size_t ls = 0;
  *line = 1;
  for (size_t i = 0; i < pos; i++)
    if (p->src[i] == '\n') ++*line, ls = i + 1;
  *col = pos - ls + 1;
}

/* "expected <want> [for|to close|... at L:C], found <token>". Kept out of
 * line: the recursive parse functions call it, and its buffers must not
 * enlarge their frames (about 256 of each can be live at once). */
static OUT_OF_LINE void expected(parser *p, const char *want, size_t opened_at) {
  char found[64], where[48] = "";
  describe(p, &p->tok, found, sizeof found);
  if (opened_at != (size_t)-1) {
    size_t line, col;
    line_col(p, opened_at, &line, &col);
    snprintf(where, sizeof where, " at %zu:%zu", line, col);
  }
  perr(p, p->tok.pos, "expected %s%s, found %s", want, where, found);
}

#define NO_OPENER ((size_t)-1)

/* ------------------------------------------------------------ parser */

static int enter(parser *p) {
  if (++p->depth > ZMLX_EXPR_MAX_NESTING) {
    perr(p, p->tok.pos, "expression nested too deeply (more than %d levels)",
         ZMLX_EXPR_MAX_NESTING);
    return 0;
  }
  return 1;
}

static void leave(parser *p) { p->depth--; }

static int32_t parse_expr(parser *p);
static int32_t parse_unary(parser *p);

static OUT_OF_LINE void unknown_identifier(parser *p, const token *t) {
  zmlx_sb sb;
  zmlxi_sb_init(&sb);
  zmlxi_sb_printf(&sb, "unknown identifier '%.*s'", (int)t->len, p->src + t->pos);
  const char *sep = " (inputs: ";
  for (int i = 0; i < p->e->n_inputs && i < 16; i++, sep = ", ")
    zmlxi_sb_printf(&sb, "%s%s", sep, p->e->input_names[i]);
  if (p->e->n_inputs > 16) zmlxi_sb_append(&sb, ", ...");
  if (p->e->n_params) {
    zmlxi_sb_append(&sb, p->e->n_inputs ? "; parameters: " : " (parameters: ");
    for (int i = 0; i < p->e->n_params && i < 16; i++)
      zmlxi_sb_printf(&sb, "%s%s", i ? ", " : "", p->e->param_names[i]);
    if (p->e->n_params > 16) zmlxi_sb_append(&sb, ", ...");
  }
  if (p->e->n_inputs || p->e->n_params) zmlxi_sb_append(&sb, ")");
  perr(p, t->pos, "%s", sb.oom ? "unknown identifier" : sb.data);
  zmlxi_sb_free(&sb);
}

static OUT_OF_LINE int32_t parse_name(parser *p, const token *t) {
  const char *s = p->src + t->pos;
  if (name_is(s, t->len, "inf")) return zmlxi_expr_const(p->e, INFINITY);
  if (name_is(s, t->len, "nan")) return zmlxi_expr_const(p->e, NAN);
  sym *v = sym_find(&p->syms, s, t->len);
  if (v && v->kind == SYM_INPUT) return zmlxi_expr_input(p->e, v->value);
  if (v && v->kind == SYM_PARAM) return zmlxi_expr_param(p->e, v->value);
  if (v) return v->value;
  if (zmlxi_expr_find_function(s, t->len)) {
    perr(p, t->pos, "'%.*s' is a function: call it as %.*s(...)", (int)t->len, s, (int)t->len, s);
    return -1;
  }
  unknown_identifier(p, t);
  return -1;
}

static OUT_OF_LINE void arity_error(parser *p, const token *t, const zmlx_expr_fn_entry *f, int n) {
  const zmlx_expr_function *pub = &f->pub;
  char want[64];
  if (pub->min_args == pub->max_args)
    snprintf(want, sizeof want, "%d argument%s", pub->min_args, pub->min_args == 1 ? "" : "s");
  else
    snprintf(want, sizeof want, "%d to %d arguments", pub->min_args, pub->max_args);
  perr(p, t->pos, "function '%s' takes %s, got %d", pub->name, want, n);
}

static OUT_OF_LINE void call_not_closed(parser *p, const zmlx_expr_fn_entry *f, size_t open) {
  char want[96];
  snprintf(want, sizeof want, "',' or ')' in the call to '%s' opened", f->pub.name);
  expected(p, want, open);
}

/* The current token is the '(' after the function name `t`. */
static OUT_OF_LINE int32_t parse_call(parser *p, const token *t) {
  const zmlx_expr_fn_entry *f = zmlxi_expr_find_function(p->src + t->pos, t->len);
  if (!f) {
    sym *v = sym_find(&p->syms, p->src + t->pos, t->len);
    if (v)
      perr(p, t->pos, "'%.*s' is not a function", (int)t->len, p->src + t->pos);
    else
      perr(p, t->pos, "unknown function '%.*s'", (int)t->len, p->src + t->pos);
    return -1;
  }
  size_t open = p->tok.pos;
  next(p);
  int32_t args[3] = {-1, -1, -1};
  int n = 0;
  /* No trailing comma: after ',' an argument must follow. */
  for (int more = !at_op(p, P_RPAREN); more; more = at_op(p, P_COMMA)) {
    if (n > 0) next(p); /* the ',' */
    int32_t a = parse_expr(p);
    if (a < 0) return -1;
    if (n < 3) args[n] = a;
    if (n < 1000) n++;
  }
  if (!at_op(p, P_RPAREN)) {
    call_not_closed(p, f, open);
    return -1;
  }
  next(p);
  if (n < f->pub.min_args || n > f->pub.max_args) {
    arity_error(p, t, f, n);
    return -1;
  }
  if (f->build) return f->build(p->e, args, n);
  return zmlxi_expr_op(p->e, f->op, args[0], args[1], args[2]);
}

static int32_t parse_primary(parser *p) {
  token t = p->tok;
  if (t.kind == TK_NUM) {
    next(p);
    return zmlxi_expr_const(p->e, t.num);
  }
  if (t.kind == TK_IDENT) {
    next(p);
    return at_op(p, P_LPAREN) ? parse_call(p, &t) : parse_name(p, &t);
  }
  if (at_op(p, P_LPAREN)) {
    next(p);
    int32_t r = parse_expr(p);
    if (r < 0) return -1;
    if (!at_op(p, P_RPAREN)) {
      expected(p, "')' to close the '('", t.pos);
      return -1;
    }
    next(p);
    return r;
  }
  expected(p, "an expression", NO_OPENER);
  return -1;
}

static int32_t parse_power(parser *p) {
  int32_t base = parse_primary(p);
  if (base < 0 || !at_op(p, P_POW)) return base;
  if (!enter(p)) return -1;
  next(p);
  int32_t ex = parse_unary(p); /* right associative; 2 ** -1 allowed */
  leave(p);
  return ex < 0 ? -1 : zmlx_expr_op2(p->e, ZMLX_EOP_POW, base, ex);
}

static int32_t parse_unary(parser *p) {
  if (!at_op(p, P_MINUS) && !at_op(p, P_PLUS) && !at_op(p, P_NOT)) return parse_power(p);
  int op = p->tok.op;
  if (!enter(p)) return -1;
  next(p);
  int32_t a = parse_unary(p);
  leave(p);
  if (a < 0 || op == P_PLUS) return a;
  return zmlx_expr_op1(p->e, op == P_MINUS ? ZMLX_EOP_NEG : ZMLX_EOP_NOT, a);
}

enum { PREC_OR = 1, PREC_AND, PREC_CMP, PREC_ADD, PREC_MUL };

static int binary_prec(const token *t, zmlx_eop *op) {
  static const struct { int tok; int prec; zmlx_eop op; } table[] = {
      {P_OR, PREC_OR, ZMLX_EOP_OR},     {P_AND, PREC_AND, ZMLX_EOP_AND},
      {P_LT, PREC_CMP, ZMLX_EOP_LT},    {P_LE, PREC_CMP, ZMLX_EOP_LE},
      {P_GT, PREC_CMP, ZMLX_EOP_GT},    {P_GE, PREC_CMP, ZMLX_EOP_GE},
      {P_EQ, PREC_CMP, ZMLX_EOP_EQ},    {P_NE, PREC_CMP, ZMLX_EOP_NE},
      {P_PLUS, PREC_ADD, ZMLX_EOP_ADD}, {P_MINUS, PREC_ADD, ZMLX_EOP_SUB},
      {P_STAR, PREC_MUL, ZMLX_EOP_MUL}, {P_SLASH, PREC_MUL, ZMLX_EOP_DIV}};
  if (t->kind != TK_OP) return 0;
  for (size_t i = 0; i < sizeof table / sizeof table[0]; i++)
    if (table[i].tok == t->op) {
      *op = table[i].op;
      return table[i].prec;
    }
  return 0;
}

/* Precedence climbing: left-associative levels loop; the right operand
 * recurses only into strictly tighter levels (at most PREC_MUL deep), and
 * counts as a nesting level so that `x+(x+(x+(...` is bounded by stack use,
 * not by parentheses alone. */
static int32_t parse_binary(parser *p, int min_prec) {
  int32_t lhs = parse_unary(p);
  int compared = 0;
  while (lhs >= 0) {
    zmlx_eop op;
    int prec = binary_prec(&p->tok, &op);
    if (prec == 0 || prec < min_prec) break;
    if (prec == PREC_CMP && compared++) {
      perr(p, p->tok.pos, "comparisons cannot be chained: write 'a < b && b < c'");
      return -1;
    }
    next(p);
    /* The right operand costs stack like any nested construct. */
    if (!enter(p)) return -1;
    int32_t rhs = parse_binary(p, prec + 1);
    leave(p);
    if (rhs < 0) return -1;
    lhs = zmlx_expr_op2(p->e, op, lhs, rhs);
  }
  return lhs;
}

static int32_t parse_expr(parser *p) {
  if (!enter(p)) return -1;
  int32_t c = parse_binary(p, PREC_OR);
  if (c >= 0 && at_op(p, P_QUESTION)) {
    size_t q = p->tok.pos;
    next(p);
    int32_t a = parse_expr(p);
    if (a >= 0 && !at_op(p, P_COLON)) {
      expected(p, "':' for the '?'", q);
      a = -1;
    }
    if (a >= 0) next(p);
    int32_t b = a >= 0 ? parse_expr(p) : -1;
    c = b < 0 ? -1 : zmlxi_expr_op(p->e, ZMLX_EOP_SELECT, c, a, b);
  }
  leave(p);
  return c;
}

static int parse_assignment(parser *p) {
  token t = p->tok;
  const char *s = p->src + t.pos;
  sym *v = sym_find(&p->syms, s, t.len);
  if (is_keyword(s, t.len) || zmlxi_expr_find_function(s, t.len) || (v && v->kind != SYM_LOCAL)) {
    const char *what = is_keyword(s, t.len)        ? "a constant"
                       : zmlxi_expr_find_function(s, t.len)   ? "a function"
                       : v->kind == SYM_INPUT      ? "an input"
                                                   : "a parameter";
    perr(p, t.pos, "cannot assign to '%.*s': it is %s", (int)t.len, s, what);
    return 0;
  }
  next(p); /* name */
  next(p); /* '=' */
  int32_t r = parse_expr(p);
  if (r < 0) return 0;
  if (!sym_set(&p->syms, s, t.len, SYM_LOCAL, r)) {
    p->e->failed = ZMLX_ERR_OUT_OF_MEMORY;
    p->failed = 1;
    return 0;
  }
  return 1;
}

static void skip_separators(parser *p) {
  while (p->tok.kind == TK_SEP) next(p);
}

/* After a statement: a separator or the end, nothing else. */
static int statement_end(parser *p) {
  if (p->tok.kind == TK_SEP || p->tok.kind == TK_EOF) return 1;
  char found[64];
  describe(p, &p->tok, found, sizeof found);
  if (at_op(p, P_RPAREN))
    perr(p, p->tok.pos, "unmatched ')'");
  else if (at_op(p, P_ASSIGN))
    perr(p, p->tok.pos, "unexpected '=': assignments are whole statements 'name = expr'"
                        " (did you mean '=='?)");
  else
    perr(p, p->tok.pos, "unexpected %s after the end of an expression", found);
  return 0;
}

static int32_t parse_program(parser *p) {
  next(p);
  skip_separators(p);
  if (p->tok.kind == TK_EOF) {
    perr(p, p->tok.pos, "empty expression");
    return -1;
  }
  int32_t result = -1;
  size_t result_pos = 0, assign_pos = 0;
  while (!p->failed) {
    if (result >= 0) {
      perr(p, result_pos, "only the last statement may be a bare expression: "
                          "assign this one to a name or remove it");
      return -1;
    }
    size_t start = p->tok.pos;
    token after = p->tok.kind == TK_IDENT ? peek(p) : p->tok;
    if (p->tok.kind == TK_IDENT && after.kind == TK_OP && after.op == P_ASSIGN) {
      if (!parse_assignment(p)) return -1;
      assign_pos = start;
    } else {
      result = parse_expr(p);
      result_pos = start;
      if (result < 0) return -1;
    }
    if (!statement_end(p)) return -1;
    skip_separators(p);
    if (p->tok.kind == TK_EOF) break;
  }
  if (!p->failed && result < 0)
    perr(p, assign_pos, "the last statement must be the result expression, not an assignment");
  return p->failed ? -1 : result;
}

/* ------------------------------------------------------------ entry */

static int valid_identifier(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > ZMLX_EXPR_MAX_IDENT || !is_ident_start((unsigned char)s[0])) return 0;
  for (size_t i = 1; i < n; i++)
    if (!is_ident_char((unsigned char)s[i])) return 0;
  return 1;
}

static zmlx_status declare(symtab *t, const char *name, int kind, int index) {
  const char *what = kind == SYM_INPUT ? "input" : "parameter";
  if (!valid_identifier(name))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG,
                     "expression: %s name %d is not an identifier ([A-Za-z_][A-Za-z0-9_]*, "
                     "at most %d characters)",
                     what, index, ZMLX_EXPR_MAX_IDENT);
  size_t n = strlen(name);
  if (is_keyword(name, n) || zmlxi_expr_find_function(name, n))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "expression: %s name '%s' is reserved", what, name);
  if (sym_find(t, name, n))
    return zmlxi_fail(ZMLX_ERR_INVALID_ARG, "expression: name '%s' is declared twice", name);
  if (!sym_set(t, name, n, kind, index))
    return zmlxi_fail(ZMLX_ERR_OUT_OF_MEMORY, "expression: out of host memory");
  return ZMLX_OK;
}

static zmlx_status declare_all(symtab *t, const char *const *inputs, int n_inputs,
                               const char *const *params, int n_params) {
  for (int i = 0; i < n_inputs; i++) ZMLX_CHECK(declare(t, inputs[i], SYM_INPUT, i));
  for (int i = 0; i < n_params; i++) ZMLX_CHECK(declare(t, params[i], SYM_PARAM, i));
  return ZMLX_OK;
}

zmlx_status zmlxi_expr_parse_n(const char *text, size_t len, const char *const *input_names,
                              int n_inputs, const char *const *param_names, int n_params,
                              zmlx_expr **out) {
  ZMLX_REQUIRE_ARG(out);
  *out = NULL;
  if (!text && len) return zmlxi_fail(ZMLX_ERR_NULL_ARG, "zmlxi_expr_parse: text is NULL");
  parser p = {.src = text ? text : "", .len = len};
  zmlx_status st = zmlxi_expr_create(input_names, n_inputs, param_names, n_params, &p.e);
  if (st == ZMLX_OK) st = declare_all(&p.syms, input_names, n_inputs, param_names, n_params);
  int32_t root = st == ZMLX_OK ? parse_program(&p) : -1;
  if (st == ZMLX_OK && root >= 0) st = zmlxi_expr_add_root(p.e, root);
  free(p.syms.slots);
  if (st == ZMLX_OK && p.e->failed)
    st = zmlxi_fail(p.e->failed, "expression: too large (more than %d nodes) or out of memory",
                   ZMLX_EXPR_MAX_NODES);
  else if (st == ZMLX_OK && p.failed)
    st = ZMLX_ERR_PARSE; /* the message is already recorded */
  if (st != ZMLX_OK) {
    zmlxi_expr_free(p.e);
    return st;
  }
  *out = p.e;
  return ZMLX_OK;
}

zmlx_status zmlxi_expr_parse(const char *text, const char *const *input_names, int n_inputs,
                            const char *const *param_names, int n_params, zmlx_expr **out) {
  ZMLX_REQUIRE_ARG(text);
  return zmlxi_expr_parse_n(text, strlen(text), input_names, n_inputs, param_names, n_params,
                           out);
}
