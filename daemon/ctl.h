/* ctl.h - inferctl subcommands. Each takes the arguments after its name
 * (argv[0] is the subcommand name) and returns the process exit status. */
#pragma once

int ctl_run_main(int argc, char **argv);        /* inferctl run MODEL_DIR ...           (ctl_run.c) */
int ctl_tokenize_main(int argc, char **argv);   /* inferctl tokenize DIR "text"         (ctl_tokenize.c) */
int ctl_detokenize_main(int argc, char **argv); /* inferctl detokenize DIR ID...        (ctl_tokenize.c) */
int ctl_template_main(int argc, char **argv);   /* inferctl template DIR conv.json      (ctl_template.c) */
int ctl_model_main(int argc, char **argv);      /* inferctl model generate|quantize|info|pull|list|rm ... (ctl_model.c) */
int ctl_model_hub_main(int argc, char **argv);   /* inferctl model pull|list|rm, called by ctl_model_main (ctl_hub.c) */
int ctl_model_quantize_main(int argc, char **argv); /* inferctl model quantize, called by ctl_model_main (ctl_quantize.c) */
int ctl_model_info_main(int argc, char **argv); /* inferctl model info, called by ctl_model_main (ctl_model_info.c) */
int ctl_status_main(int argc, char **argv);     /* inferctl status [--json]             (ctl_client.c) */
int ctl_models_main(int argc, char **argv);     /* inferctl models                      (ctl_client.c) */
int ctl_chat_main(int argc, char **argv);       /* inferctl chat                        (ctl_client.c) */
