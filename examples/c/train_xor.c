/* Train the XOR network with the C code nncc generated from examples/xor.nn
 * (generated/c/xor.h and xor.c): no Python anywhere.  `make run` builds and runs it.
 * xor_train_step is the program's optimizer (Adam); xor_sgd_step would be plain SGD. */
#include <stdio.h>
#include <stdlib.h>

#include "xor.h"

int main(void)
{
    static xor_real params[XOR_PARAM_COUNT], grad[XOR_PARAM_COUNT];
    static xor_real state[XOR_STATE_COUNT];  /* Adam's two moments per parameter: zeros to start */
    const xor_real x[4 * XOR_X_SIZE] = {0, 0, 0, 1, 1, 0, 1, 1};
    const xor_real y[4 * XOR_Y_SIZE] = {0, 1, 1, 0};
    xor_real out[4 * XOR_OUTPUT_SIZE];
    xor_real *work = malloc(XOR_WORKSPACE_BYTES(4));
    xor_real loss = 0;
    if (work == NULL)
        return 1;
    xor_init_params(params, 1);
    for (long step = 1; step <= 2000; step++) {
        /* learning rate 0.05, no gradient clipping (max_norm 0) */
        loss = xor_train_step(params, state, x, y, 4, (xor_real)0.05, step, 0, grad, work);
        if (step % 200 == 0)
            printf("step %4ld  loss %.6f\n", step, (double)loss);
    }
    xor_forward(params, x, out, 4, work);
    printf("xor(0,0)=%.3f xor(0,1)=%.3f xor(1,0)=%.3f xor(1,1)=%.3f\n",
           (double)out[0], (double)out[1], (double)out[2], (double)out[3]);
    free(work);
    return loss < 0.05 ? 0 : 1;
}
