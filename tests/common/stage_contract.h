/* stage_contract.h - drives any stage implementation through the stage
 * contract (model/stage.h), so that the fake, CPU and Vulkan stages are held
 * to the same errno and message for the same bad batch. */
#pragma once

#include "model/stage.h"

/* s must be fresh (no position held), with at least 2 slots of at least 4
 * positions. Leaves every slot empty again. */
void stage_contract_check(struct stage *s);
