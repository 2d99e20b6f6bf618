//! IO shells: kernel (aya, AF_XDP) and network (tokio) around the cores.
