// A server whose single thread handles each connection slowly (a 30 s sleep).
import java.net.ServerSocket;
import java.net.Socket;

public class Slow {
    static void handle(Socket s) throws Exception {
        Thread.sleep(30_000);  // a slow handler
        s.close();
    }
    public static void main(String[] args) throws Exception {
        ServerSocket lst = new ServerSocket(Integer.parseInt(args[0]), 4);
        System.out.println("listening");
        while (true) handle(lst.accept());
    }
}
