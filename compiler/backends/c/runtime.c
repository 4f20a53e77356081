/* The runtime helpers of generated C, as real source: each function is copied verbatim
 * into a file that calls it, after `real` (float or double) and a #define giving each
 * helper a name of that network's own (so that several networks can share a file).
 * Here they are compiled with -Wall -Wextra -Werror and unit-tested. */

static real nncc_sigmoid(real z)
{
    /* 1/(1+exp(-z)) as PyTorch and the numpy module compute it: where exp(-z) overflows
     * it is inf and the sigmoid 0.  The exp(-|z|) form would instead give subnormals
     * there, and a gradient dividing by one (binary cross-entropy's) overflows to inf */
    return 1 / (1 + exp(-z));
}

static real nncc_softplus(real z)
{
    /* log(1 + exp(z)) without overflow */
    return (z > 0 ? z : 0) + log1p(exp(-fabs(z)));
}

static real nncc_where(int condition, real a, real b)
{
    /* both branches evaluated, then one chosen (see the C printer's _print_Where) */
    return condition ? a : b;
}

static real nncc_clamped_log(real a, real floor_)
{
    /* max(log(a), floor_): log(0) = -inf gives floor_ */
    real v = log(a);
    return v > floor_ ? v : floor_;
}
